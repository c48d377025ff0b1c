#!/usr/bin/env bash
# Build a static runc (with seccomp) for the msb guest image.
#
#   hack/build-runc.sh OUTDIR        -> OUTDIR/runc
#
# Env: RUNC_VERSION (default v1.5.2), GO (default: go on PATH, else /usr/local/go/bin/go).
# Idempotent: the result is cached per version in OUTDIR/.runc-<version>; a rerun with the same
# version only re-verifies the binary and copies it into place.
set -euo pipefail

OUTDIR=${1:?usage: $0 OUTDIR}
RUNC_VERSION=${RUNC_VERSION:-v1.5.2}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cache="$OUTDIR/.runc-$RUNC_VERSION"

is_static() { # no PT_INTERP / not dynamic
	local f=$1
	if command -v readelf >/dev/null 2>&1; then
		! readelf -lW "$f" 2>/dev/null | grep -q 'INTERP'
		return
	fi
	LC_ALL=C ldd "$f" 2>&1 | grep -Eq 'not a dynamic executable|statically linked'
}

if [[ -x "$cache/runc" ]] && is_static "$cache/runc"; then
	install -m 0755 "$cache/runc" "$OUTDIR/runc"
	echo "runc $RUNC_VERSION (cached) -> $OUTDIR/runc"
	exit 0
fi

need=()
pkg-config --exists libseccomp 2>/dev/null || need+=(libseccomp-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[[ -e /usr/lib/x86_64-linux-gnu/libseccomp.a || -e /usr/lib/libseccomp.a ]] || need+=(libseccomp-dev)
if ((${#need[@]})); then
	echo "installing build deps: ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
		{ apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}"; }
fi

tmp=$(mktemp -d "$OUTDIR/.runc-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building runc $RUNC_VERSION (static, seccomp) ..." >&2
CGO_ENABLED=1 GOBIN="$tmp" GOFLAGS=-buildvcs=false \
	"$GO" install -trimpath -tags 'seccomp netgo osusergo' \
	-ldflags '-s -w -extldflags -static' \
	"github.com/opencontainers/runc@$RUNC_VERSION"

if ! is_static "$tmp/runc"; then
	echo "error: $tmp/runc is dynamically linked" >&2
	exit 1
fi
"$tmp/runc" --version >&2
mkdir -p "$cache"
mv "$tmp/runc" "$cache/runc"
install -m 0755 "$cache/runc" "$OUTDIR/runc"
echo "runc $RUNC_VERSION -> $OUTDIR/runc"
