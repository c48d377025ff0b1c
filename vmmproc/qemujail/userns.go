package qemujail

import (
	"fmt"
	"io"
	"os"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/vmm"
)

// UserNS makes qemu's user namespace for the VM's ids from base:
// shifted, its shares id-mapped with it; where one cannot be (an overlay
// that Podman or Docker 20.10 mounted as the rootfs, NFS, FUSE) or
// c.JailHostIDs asks for it, one that maps the host's ids to themselves
// (hostIDs true), its binds plain.
func UserNS(c *vmm.LaunchConfig, base uint32, chanSock string, logf io.Writer) (userns *os.File, hostIDs bool, err error) {
	if c.JailHostIDs {
		userns, err = jail.NewUserNS(base, nil, true)
		return userns, true, err
	}
	if userns, err = jail.NewUserNS(base, c.JailKeptIDs, false); err != nil {
		return nil, false, err
	}
	alone := map[string]bool{}
	for _, s := range c.Shares {
		alone[s.Path] = alone[s.Path] || s.IDMappedFile != ""
	}
	err = jail.IDMappable(idMapped(c, chanSock), alone, userns)
	if err == nil {
		return userns, false, nil
	}
	userns.Close()
	if c.JailIDBase != 0 { // its rootfs is shifted for the namespace
		return nil, false, fmt.Errorf("jail: %w; move it to a filesystem that can (ext4, xfs, btrfs, tmpfs), or set jail = false in /etc/msb/config.toml", err)
	}
	// A container user namespace's kept ids are below jail.IDBase: a
	// host-ids namespace maps them too.
	fmt.Fprintf(logf, "msb-vmm: %v: qemu's user namespace maps the host's ids to themselves (ADR 022)\n", err)
	userns, err = jail.NewUserNS(base, nil, true)
	return userns, true, err
}
