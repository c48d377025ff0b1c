#!/usr/bin/env bash
# Build the msb guest image from scratch (developer / CI helper).
#
#   hack/build-guest-image.sh [OUTDIR]          (default OUTDIR: /var/lib/msb)
#
# Env:
#   KERNEL_DIR  a kernel of msb's own, from hack/build-kernel.sh (vmlinux, kernel.release);
#               when set, KERNEL_DEB is not used
#   KERNEL_DEB  linux-image-*.deb to use (default: the newest in $CACHE, else apt-get download)
#   AGENT       static agent binary (default: build ./cmd/msb-agent with CGO_ENABLED=0)
#   CACHE       where the kernel .deb and the static runc are kept (default /var/cache/msb)
#   MSB_GUEST_RUNTIME  the guest's OCI runtime: runc (a static build, hack/build-runc.sh)
#               or crun (the distribution's package, apt-get install crun; with its
#               shared libraries) (default crun; docs/adr/021-guest-oci-runtime.md)
#   CRUN        the crun binary for MSB_GUEST_RUNTIME=crun (default: crun on PATH)
set -euo pipefail

cd "$(dirname "$0")/.."
OUTDIR=${1:-/var/lib/msb}
CACHE=${CACHE:-/var/cache/msb}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
mkdir -p "$CACHE"

MSB_GUEST_RUNTIME=${MSB_GUEST_RUNTIME:-crun}
case $MSB_GUEST_RUNTIME in
runc)
	hack/build-runc.sh "$CACHE"
	runtime=(-runtime runc -runc "$CACHE/runc")
	;;
crun)
	CRUN=${CRUN:-$(command -v crun || true)}
	[[ -n "$CRUN" ]] || { echo "MSB_GUEST_RUNTIME=crun: no crun on PATH (apt-get install crun, or set CRUN)" >&2; exit 1; }
	runtime=(-runtime crun -crun "$CRUN")
	;;
*)
	echo "MSB_GUEST_RUNTIME=$MSB_GUEST_RUNTIME: want runc or crun" >&2
	exit 1
	;;
esac

if [[ -n "${KERNEL_DIR:-}" ]]; then
	:
elif [[ -z "${KERNEL_DEB:-}" ]]; then
	KERNEL_DEB=$(ls -1 "$CACHE"/linux-image-*.deb 2>/dev/null | sort | tail -n1 || true)
	if [[ -z "$KERNEL_DEB" ]]; then
		meta=linux-image-amd64
		apt-cache show "$meta" >/dev/null 2>&1 || meta=linux-image-generic
		pkg=$(apt-cache depends "$meta" | awk '$1=="Depends:" && $2 ~ /^linux-image-(unsigned-)?[0-9]/ {print $2; exit}')
		[[ -n "$pkg" ]] || { echo "cannot resolve the kernel package of $meta (apt-get update?)" >&2; exit 1; }
		(cd "$CACHE" && apt-get download "$pkg")
		# Ubuntu ships the modules in linux-modules-<release>; guest.Build picks it up
		# from beside the kernel package.
		modpkg=linux-modules-${pkg#linux-image-}
		modpkg=${modpkg/#linux-modules-unsigned-/linux-modules-}
		if apt-cache show "$modpkg" >/dev/null 2>&1; then
			(cd "$CACHE" && apt-get download "$modpkg")
		fi
		KERNEL_DEB=$(ls -1 "$CACHE/${pkg}"_*.deb | sort | tail -n1)
	fi
fi

if [[ -z "${AGENT:-}" ]]; then
	AGENT="$CACHE/msb-agent"
	CGO_ENABLED=0 "$GO" build -trimpath -ldflags '-s -w' -o "$AGENT" ./cmd/msb-agent
fi

kernel=(-kernel-deb "${KERNEL_DEB:-}")
[[ -z "${KERNEL_DIR:-}" ]] || kernel=(-kernel-dir "$KERNEL_DIR")
"$GO" run ./hack/mkguest "${kernel[@]}" -agent "$AGENT" "${runtime[@]}" -out "$OUTDIR"
