#!/usr/bin/env bash
# Build containerd, ctr, containerd's runc shim and a host runc from the Go module proxy.
#
#   hack/build-containerd.sh [OUTDIR]     (default /var/cache/msb/bin)
#
#   OUTDIR/containerd                the daemon (CRI included, btrfs snapshotter left out)
#   OUTDIR/ctr                       containerd's CLI
#   OUTDIR/containerd-shim-runc-v2   containerd's runc shim (io.containerd.runc.v2: the
#                                    baseline for benchmarks and the test harness's self-test)
#   OUTDIR/runc                      static runc from hack/build-runc.sh (for the runc shim)
#
# Nothing is installed system-wide here: install.sh copies these into /usr/local/{bin,sbin}.
#
# Env: CONTAINERD_VERSION (default v2.4.2), RUNC_VERSION (see hack/build-runc.sh),
#      MSB_CACHE (default: OUTDIR's parent; where build-runc.sh keeps runc),
#      GO (default: go on PATH, else /usr/local/go/bin/go).
# Idempotent: the binaries are cached per version in OUTDIR/.containerd-<version>; a rerun with
# the same version only checks them and copies them into place.
#
# Build tags are those of containerd's Makefile: urfave_cli_no_docs everywhere; no_btrfs for the
# daemon (the btrfs snapshotter is cgo and needs libbtrfs headers, which Debian 12 lacks unless
# btrfs-progs' -dev package is installed); the shim is built as the Makefile does:
# CGO_ENABLED=0, static, with no_grpc.
set -euo pipefail

OUTDIR=${1:-/var/cache/msb/bin}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
MSB_CACHE=${MSB_CACHE:-$(dirname "$OUTDIR")}
cache="$OUTDIR/.containerd-$CONTAINERD_VERSION"
bins=(containerd ctr containerd-shim-runc-v2)
pkg=github.com/containerd/containerd/v2

log() { echo "build-containerd: $*" >&2; }

cached() {
	local b
	for b in "${bins[@]}"; do [[ -x "$cache/$b" ]] || return 1; done
	# the daemon must say the version we asked for (guards against a half-written cache)
	"$cache/containerd" --version 2>/dev/null | grep -qF " ${CONTAINERD_VERSION} "
}

if cached; then
	log "containerd $CONTAINERD_VERSION (cached in $cache)"
else
	tmp=$(mktemp -d "$OUTDIR/.containerd-build.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	ldflags="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Revision=$CONTAINERD_VERSION -X $pkg/version.Package=$pkg"
	t0=$(date +%s)
	log "building containerd + ctr $CONTAINERD_VERSION (tags: urfave_cli_no_docs no_btrfs) ..."
	GOBIN="$tmp" GOFLAGS=-buildvcs=false "$GO" install -trimpath \
		-tags 'urfave_cli_no_docs no_btrfs' -ldflags "$ldflags" \
		"$pkg/cmd/containerd@$CONTAINERD_VERSION" "$pkg/cmd/ctr@$CONTAINERD_VERSION"
	t1=$(date +%s)
	log "  containerd + ctr built in $((t1 - t0)) s"
	log "building containerd-shim-runc-v2 $CONTAINERD_VERSION (static, tags: urfave_cli_no_docs no_grpc) ..."
	CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-buildvcs=false "$GO" install -trimpath \
		-tags 'urfave_cli_no_docs no_grpc' -ldflags "$ldflags -extldflags -static" \
		"$pkg/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
	log "  containerd-shim-runc-v2 built in $(($(date +%s) - t1)) s"
	"$tmp/containerd" --version >&2
	mkdir -p "$cache"
	for b in "${bins[@]}"; do mv "$tmp/$b" "$cache/$b"; done
	log "containerd $CONTAINERD_VERSION built in $(($(date +%s) - t0)) s"
fi
for b in "${bins[@]}"; do install -m 0755 "$cache/$b" "$OUTDIR/$b"; done

log "runc (for the runc shim, via hack/build-runc.sh, cached in $MSB_CACHE) ..."
"$here/build-runc.sh" "$MSB_CACHE" >&2
[[ "$MSB_CACHE/runc" -ef "$OUTDIR/runc" ]] || install -m 0755 "$MSB_CACHE/runc" "$OUTDIR/runc"
log "done: $(cd "$OUTDIR" && echo "${bins[@]}" runc) in $OUTDIR"
