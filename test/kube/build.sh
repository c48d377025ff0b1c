#!/usr/bin/env bash
# build.sh — build the one-node cluster's programs, cached in $KUBE_CACHE/$KUBE_VERSION-N
# (default /var/cache/msb/kube/v1.37.2-1): kubelet, kube-apiserver, kubectl and etcd. Prints that
# directory. A rerun with everything built (the stamp file .built is there) does nothing.
#
# k8s.io/kubernetes replaces its staging modules (k8s.io/api, k8s.io/client-go, ...) with local
# paths in its go.mod, so `go install k8s.io/kubernetes/cmd/kubelet@v1.37.2` refuses it. A small
# build module requires k8s.io/kubernetes and replaces each staging module k8s.io/X with the
# published k8s.io/X v0.37.2 instead (the list is read from kubernetes' own go.mod). etcd's server
# module replaces its sibling modules the same way, so its main package is built from a second
# small module requiring go.etcd.io/etcd/server/v3 (kept apart: its dependencies' versions must not
# move kubernetes' ones).
#
# The build runs under `nice -n 10` with go's -p=1 by default (the machine is shared):
# KUBE_BUILD_NICE and KUBE_BUILD_P change them. Env: KUBE_CACHE, KUBE_BUILD_P, KUBE_BUILD_NICE.
set -euo pipefail
export PATH=$PATH:/usr/local/go/bin
export HOME=${HOME:-/root}
KUBE_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.7.3
CACHE=${KUBE_CACHE:-/var/cache/msb/kube}
DIR=$CACHE/$KUBE_VERSION-1 # -N: bump when the build below changes
STAMP=$DIR/.built
log() { echo "[kube-build $(date +%T)] $*" >&2; }
die() { echo "kube-build: $*" >&2; exit 2; }

if [[ -e $STAMP ]]; then
	echo "$DIR"
	exit 0
fi
export GOFLAGS="${GOFLAGS:-} -p=${KUBE_BUILD_P:-1}"
NICE=${KUBE_BUILD_NICE:-10}
start=$(date +%s)
mkdir -p "$CACHE"
rm -rf "$DIR.tmp"
mkdir -p "$DIR.tmp"

# ---- kubernetes
log "building kubernetes $KUBE_VERSION (kubelet, kube-apiserver, kubectl; once, cached in $DIR)"
kmod=$(cd "$CACHE" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -f $kmod/go.mod ]] || die "go mod download k8s.io/kubernetes@$KUBE_VERSION gave no go.mod"
staging=$(sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => \./staging/src/k8s.io/.*|\1|p' "$kmod/go.mod" | sort -u)
[[ -n $staging ]] || die "found no staging replacements in $kmod/go.mod"
log "$(wc -w <<<"$staging") staging modules, each replaced with its $STAGING_VERSION"
src=$CACHE/src-kubernetes
rm -rf "$src"
mkdir -p "$src"
gover=$(go env GOVERSION)
gover=${gover#go}
{
	echo "module msb.local/kubebuild"
	echo
	echo "go $gover"
	echo
	echo "require k8s.io/kubernetes $KUBE_VERSION"
	echo
	for m in $staging; do echo "replace $m => $m $STAGING_VERSION"; done
	echo
	for t in kubelet kube-apiserver kubectl; do echo "tool k8s.io/kubernetes/cmd/$t"; done
} >"$src/go.mod"
(cd "$src" && go mod tidy) >&2 || die "go mod tidy of the kubernetes build module failed"
vpkgs="k8s.io/component-base/version k8s.io/client-go/pkg/version"
ldf="-s -w"
for p in $vpkgs; do
	ldf+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=37"
	ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
(cd "$src" && nice -n "$NICE" go build -trimpath -ldflags "$ldf" -o "$DIR.tmp/" \
	k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl) >&2 ||
	die "building kubernetes failed"

# ---- etcd
log "building etcd $ETCD_VERSION"
esrc=$CACHE/src-etcd
rm -rf "$esrc"
mkdir -p "$esrc"
{
	echo "module msb.local/etcdbuild"
	echo
	echo "go $gover"
	echo
	echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
	echo
	echo "tool go.etcd.io/etcd/server/v3"
} >"$esrc/go.mod"
(cd "$esrc" && go mod tidy) >&2 || die "go mod tidy of the etcd build module failed"
(cd "$esrc" && nice -n "$NICE" go build -trimpath -ldflags "-s -w" -o "$DIR.tmp/etcd" go.etcd.io/etcd/server/v3) >&2 ||
	die "building etcd failed"

for b in kubelet kube-apiserver kubectl etcd; do
	[[ -x $DIR.tmp/$b ]] || die "no $b was built"
done
"$DIR.tmp/kubectl" version --client 2>/dev/null | grep -q "$KUBE_VERSION" || die "kubectl does not report $KUBE_VERSION"
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
rm -rf "$src" "$esrc"
echo "built in $(($(date +%s) - start)) s" >"$STAMP"
log "built in $(($(date +%s) - start)) s"
echo "$DIR"
