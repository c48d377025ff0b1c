#!/usr/bin/env bash
# Build msb's own guest kernel from Debian's linux-source-6.1 with the
# checked-in Kconfig fragment guest/kconfig/msb.config (docs/guest-image.md).
#
#   hack/build-kernel.sh [CACHE]          (default CACHE: /var/cache/msb)
#
# Prints the path of the cached kernel directory on its last line:
# CACHE/kernel/<source version>-<fragment hash>/ with vmlinux (uncompressed,
# PVH entry), config and kernel.release. A rebuild happens only when the
# source package or the fragment changes; a finished build is never redone.
# Needs the packages linux-source-6.1 bc bison flex libelf-dev (install.sh
# installs them). Env: JOBS (default: number of CPUs + 1).
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE=${CACHE:-${1:-/var/cache/msb}}
fragment=$PWD/guest/kconfig/msb.config
tarball=$(ls -1 /usr/src/linux-source-6.1.tar.xz 2>/dev/null || true)
[[ -n $tarball ]] || { echo "build-kernel: /usr/src/linux-source-6.1.tar.xz missing: apt-get install linux-source-6.1" >&2; exit 1; }
srcver=$(dpkg-query -W -f '${Version}' linux-source-6.1)
hash=$(sha256sum "$fragment" | cut -c1-12)
out=$CACHE/kernel/$srcver-$hash
if [[ -s $out/vmlinux ]]; then
	echo "kernel cached: $out ($(cat "$out/kernel.release"))" >&2
	echo "$out"
	exit 0
fi

work=$CACHE/kernel/.work
mkdir -p "$work"
src=$work/linux-source-6.1
if [[ ! -e $src/.msb-unpacked-$srcver ]]; then
	echo "build-kernel: unpacking linux-source-6.1 $srcver ..." >&2
	rm -rf "$src"
	tar -xf "$tarball" -C "$work"
	touch "$src/.msb-unpacked-$srcver"
fi
obj=$work/obj-$hash
mkdir -p "$obj"
make -s -C "$src" O="$obj" KCONFIG_ALLCONFIG="$fragment" allnoconfig >&2
# Kconfig drops an option whose dependencies are off without a word:
# every option the fragment asks for must be in the result as asked.
bad=0
while IFS= read -r l; do
	k=${l%%=*} v=${l#*=}
	if [[ $v == n ]]; then
		grep -q "^$k=" "$obj/.config" && { echo "build-kernel: $k is on, the fragment wants it off" >&2; bad=1; }
	elif ! grep -qxF "$l" "$obj/.config"; then
		echo "build-kernel: $l did not survive Kconfig (a dependency is off): fix guest/kconfig/msb.config" >&2
		bad=1
	fi
done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$fragment")
((bad == 0)) || exit 1

jobs=${JOBS:-$(($(nproc) + 1))}
echo "build-kernel: building vmlinux ($(grep -c '=y' "$obj/.config") options on, $jobs jobs; some 10 minutes on 2 cores) ..." >&2
start=$(date +%s)
make -s -C "$src" O="$obj" -j"$jobs" vmlinux >&2
release=$(make -s -C "$src" O="$obj" kernelrelease)
echo "build-kernel: built $release in $(($(date +%s) - start)) s" >&2

tmp=$out.tmp
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$obj/vmlinux" "$tmp/vmlinux"
strip --strip-debug "$tmp/vmlinux" 2>/dev/null || true
cp "$obj/.config" "$tmp/config"
echo "$release" >"$tmp/kernel.release"
echo "linux-source-6.1 $srcver + guest/kconfig/msb.config ($hash)" >"$tmp/source"
mv "$tmp" "$out"
rm -rf "$work" # the unpacked source and objects: some 2 GiB
echo "$out"
