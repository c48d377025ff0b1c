// Package guest builds the guest image for msb's qemu backend: an uncompressed, PVH
// bootable vmlinux and the original bzImage taken from a distribution kernel package,
// and a newc initramfs holding the agent (/init), a static runc and the kernel modules
// the agent loads at boot. See docs/guest-image.md.
package guest
