#!/usr/bin/env bash
# build.sh — build what test/ctrsuite/run.sh runs, cached: containerd's integration/client suite
# (`go test -c`, from the module github.com/containerd/containerd/v2 at the installed containerd's
# version, copied out of the module cache; and its runc-fp) into $CTRSUITE_CACHE (default /var/cache/msb/ctrsuite),
# and critest's tools (crane, critest-summary: test/critest/build-tools.sh). Prints the suite
# directory (client.test, runc-fp). A rerun with everything built does nothing.
# Env: CTRSUITE_CACHE, CONTAINERD_BIN (default: containerd on PATH).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PATH=$PATH:/usr/local/go/bin
export HOME=${HOME:-/root}
CACHE=${CTRSUITE_CACHE:-/var/cache/msb/ctrsuite}
log() { echo "[ctrsuite $(date +%T)] $*" >&2; }
die() { echo "ctrsuite: $*" >&2; exit 2; }
CONTAINERD_BIN=${CONTAINERD_BIN:-$(command -v containerd || true)}
[[ -x $CONTAINERD_BIN ]] || die "no containerd on PATH (install.sh installs one)"
VERSION=$("$CONTAINERD_BIN" --version | awk '{print $3}')
[[ $VERSION == v2.* ]] || die "containerd $VERSION: the suite is built for containerd v2"

"$REPO/test/critest/build-tools.sh" >&2

# ---- the suite binary and runc-fp (runc with failpoints, for the runc baseline's failpoint
# tests), once per containerd version
DIR=$CACHE/$VERSION-1 # -N: the patch below
if [[ ! -x $DIR/client.test || ! -x $DIR/runc-fp ]]; then
	log "building containerd $VERSION's integration/client suite (once; cached in $DIR)"
	mkdir -p "$CACHE"
	mod=$(cd "$CACHE" && go mod download -json "github.com/containerd/containerd/v2@$VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -d $mod ]] || die "go mod download github.com/containerd/containerd/v2@$VERSION gave no directory"
	src=$CACHE/src-$VERSION
	rm -rf "$src" "$DIR.tmp"
	cp -r "$mod" "$src"
	chmod -R u+w "$src"
	# The suite names its images in package variables, set before flags are parsed (its
	# -image-list never applies): the list is read from the environment instead.
	sed -i 's|initImages(\*imageListFile)|initImages(os.Getenv("CONTAINERD_TEST_IMAGE_LIST"))|' \
		"$src/integration/images/image_list.go"
	grep -q CONTAINERD_TEST_IMAGE_LIST "$src/integration/images/image_list.go" || die "could not point the suite's images at a list"
	(cd "$src" && go test -c -o "$DIR.tmp/client.test" ./integration/client &&
		go build -o "$DIR.tmp/runc-fp" ./integration/failpoint/cmd/runc-fp) >&2 || die "building the suite failed"
	rm -rf "$DIR"
	mv "$DIR.tmp" "$DIR"
	rm -rf "$src"
fi

echo "$DIR"
