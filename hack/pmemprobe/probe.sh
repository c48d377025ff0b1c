#!/usr/bin/env bash
# probe.sh MACHINE [DIR] (as root) — does virtio-pmem with DAX work for the guest's root disk
# on this host's qemu, and what does a guest then cache? ADR 025 quotes its output.
# MACHINE: microvm (msb's machine: virtio-pmem on virtio-mmio) or q35 (virtio-pmem-pci).
# No msb code: it boots Debian's kernel from the distribution-kernel image
# (/var/tmp/msb-distro-image, hack/build-guest-image.sh with MSB_KERNEL=distro; it has
# virtio-pmem, libnvdimm, FS_DAX and ZONE_DEVICE) with a busybox initramfs that loads the
# modules, mounts msb's root disk (/var/lib/msb/rootfs.img, padded to a 2 MiB multiple)
# from /dev/pmem0 with -o dax=always, reads every file of it and prints the guest's
# `Cached` before and after; on microvm also over virtio-blk, for comparison. Two VMs run,
# and it prints the PSS of the image's mapping in each qemu (shared page cache). Everything
# it starts is stopped on exit.
set -euo pipefail
MACHINE=${1:?usage: probe.sh microvm|q35 [DIR]}
W=${2:-/tmp/msb-pmemprobe}
IMG=/var/tmp/msb-distro-image
M=$IMG/modules/$(cat "$IMG/kernel.release")
[[ -d $M ]] || { echo "no $M: build the distribution-kernel image first" >&2; exit 1; }
rm -rf "$W" && mkdir -p "$W"/root/{bin,proc,sys,dev,p,b}
R=$W/root/lib/modules/$(cat "$IMG/kernel.release")
mkdir -p "$R" && cp "$M"/modules.* "$R"/
for k in drivers/virtio/{virtio,virtio_ring,virtio_mmio,virtio_pci,virtio_pci_legacy_dev,virtio_pci_modern_dev} \
	drivers/nvdimm/{nd_virtio,libnvdimm,virtio_pmem,nd_btt,nd_pmem} lib/crc16 fs/jbd2/jbd2 fs/mbcache fs/ext4/ext4 \
	drivers/block/virtio_blk crypto/crc32c_generic; do
	mkdir -p "$R/kernel/$(dirname "$k")" && cp "$M/kernel/$k.ko" "$R/kernel/$k.ko"
done
cp /bin/busybox "$W/root/bin/busybox" # static
cat >"$W/root/init" <<'I'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in crc32c_generic virtio_pci virtio_mmio virtio_pmem nd_pmem virtio_blk ext4; do modprobe $m 2>/dev/null; done
sleep 1
echo "DEVS: $(ls /dev | grep -E 'pmem|vd' | tr '\n' ' ')"
mount -t ext4 -o ro,dax=always /dev/pmem0 /p && echo PMEM-MOUNTED
dmesg | grep -E 'nd_pmem|pmem0' | tail -3
echo "C0 $(grep ^Cached /proc/meminfo)"
find /p -type f -exec cat {} + >/dev/null 2>&1; echo "C1-after-reading-all-via-pmem $(grep ^Cached /proc/meminfo)"
if mount -t ext4 -o ro /dev/vda /b 2>/dev/null; then
	find /b -type f -exec cat {} + >/dev/null; echo "C2-after-reading-all-via-virtio-blk $(grep ^Cached /proc/meminfo)"
fi
echo PROBE-DONE
while :; do sleep 3600; done
I
chmod +x "$W/root/init"
(cd "$W/root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$W/initrd.gz")
cp /var/lib/msb/rootfs.img "$W/rootfs.img"
sz=$(stat -c %s "$W/rootfs.img")
mib=$(((sz + 2097151) / 2097152 * 2))
truncate -s "${mib}M" "$W/rootfs.img"
tsc=$(awk -F: '/cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
args=(-nodefaults -no-user-config -nographic -no-reboot -m 256,slots=1,maxmem=1G -smp 1 -accel tcg,tb-size=64 -cpu max
	-initrd "$W/initrd.gz" -append "console=ttyS0 panic=-1 reboot=t tsc_early_khz=$tsc rdinit=/init"
	-object "memory-backend-file,id=pm,mem-path=$W/rootfs.img,size=${mib}M,share=off,readonly=on")
if [[ $MACHINE == microvm ]]; then
	args+=(-machine microvm -kernel "$IMG/vmlinux" -device virtio-pmem,memdev=pm
		-blockdev "{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$W/rootfs.img\",\"read-only\":true},\"node-name\":\"root\",\"read-only\":true}"
		-device virtio-blk-device,drive=root)
else
	args+=(-machine q35 -kernel "$IMG/vmlinuz" -device virtio-pmem-pci,memdev=pm)
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; sleep 2; kill -9 "${pids[@]}" 2>/dev/null; true' EXIT
for i in 0 1; do
	qemu-system-x86_64 "${args[@]}" -serial "file:$W/console$i.log" >"$W/qemu$i.log" 2>&1 </dev/null &
	pids+=($!)
done
for _ in $(seq 180); do
	grep -q PROBE-DONE "$W/console0.log" "$W/console1.log" 2>/dev/null && break
	sleep 1
done
sleep 2
grep -E 'DEVS|PMEM|nd_pmem|pmem0|^C[0-9]|PROBE' "$W/console0.log" || { cat "$W/qemu0.log"; exit 1; }
for i in 0 1; do
	echo "qemu $i: the image's mapping: $(awk -v f="$W/rootfs.img" '/^[0-9a-f]+-/ {m = ($6 == f)} m && /^(Rss|Pss):/ {printf "%s %s kB ", $1, $2}' "/proc/${pids[$i]}/smaps")"
done
