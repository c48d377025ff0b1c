package mounts

import (
	"fmt"
	"os"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// IDMap is a bind's uidMappings and gidMappings (an id-mapped mount, what
// CRI asks for in a pod with a user namespace): a file whose owner is
// ContainerID+k on disk shows as HostID+k. 9p and virtio-fs cannot carry
// an id-mapped mount into the guest, so the host makes the bind id-mapped
// before it is shared: the guest sees the shifted owners, which the
// container's user namespace maps back.
type IDMap struct {
	UIDs, GIDs []specs.LinuxIDMapping
	// NS, when set, is the user namespace to map with instead of one made
	// from UIDs and GIDs: a jailed qemu's own (ADR 022), so that a pod
	// member's bind shows its files' owners to that qemu as the VM's own
	// shares do.
	NS *os.File
	// Hypervisor is the host id the hypervisor serves 9p as: its root's,
	// the first of its user namespace's range for a jailed qemu (ADR 022),
	// 0 for one that is root of the host's. An id-mapped bind maps it to
	// hypervisorID on disk.
	Hypervisor uint32
}

// Key is the suffix that keeps a source's id-mapped binds (one per
// mapping) apart from its plain bind; "" for nil.
func (m *IDMap) Key() string {
	if m == nil {
		return ""
	}
	return "@" + idMapList(m.UIDs) + "/" + idMapList(m.GIDs)
}

func idMapList(ms []specs.LinuxIDMapping) string {
	var s []string
	for _, m := range ms {
		s = append(s, fmt.Sprintf("%d:%d:%d", m.ContainerID, m.HostID, m.Size))
	}
	return strings.Join(s, ",")
}

// hypervisorID is the id on disk that host id 0 gets in an id-mapped bind
// whose mappings leave host 0 out: the hypervisor serves 9p as root and
// creates each file as root before it gives the file the guest's owner,
// and the kernel refuses to create a file for an id the mount cannot map
// (EOVERFLOW). The largest valid id, which no container mapping reaches.
const hypervisorID = 4294967294

// withHypervisor returns ms plus hypervisorID→hv (the hypervisor's host
// id) unless ms maps hv or uses hypervisorID already.
func withHypervisor(ms []specs.LinuxIDMapping, hv uint32) string {
	for _, m := range ms {
		if m.HostID <= hv && uint64(hv) < uint64(m.HostID)+uint64(m.Size) || uint64(m.ContainerID)+uint64(m.Size) > hypervisorID {
			return idMapList(ms)
		}
	}
	return idMapList(ms) + fmt.Sprintf(",%d:%d:1", uint32(hypervisorID), hv)
}

// withHypervisorList is withHypervisor(…, 0) for a mapping list in
// GetUsernsFD's form (containerd's uidmap and gidmap mount options);
// a list it cannot read is returned as it is, for GetUsernsFD to refuse.
func withHypervisorList(list string) string {
	var ms []specs.LinuxIDMapping
	for _, e := range strings.Split(list, ",") {
		var m specs.LinuxIDMapping
		if _, err := fmt.Sscanf(e, "%d:%d:%d", &m.ContainerID, &m.HostID, &m.Size); err != nil {
			return list
		}
		ms = append(ms, m)
	}
	return withHypervisor(ms, 0)
}

// setIDMap makes every mount of the detached tree id-mapped as m says.
func setIDMap(tree int, m *IDMap, source string) error {
	if m.NS != nil {
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(m.NS.Fd())}
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
			return fmt.Errorf("bind %s id-mapped for the hypervisor's user namespace (its filesystem must support id-mapped mounts): %w", source, err)
		}
		return nil
	}
	ns, err := mount.GetUsernsFD(withHypervisor(m.UIDs, m.Hypervisor), withHypervisor(m.GIDs, m.Hypervisor))
	if err != nil {
		return fmt.Errorf("bind %s id-mapped: user namespace for %s: %w", source, m.Key(), err)
	}
	defer ns.Close()
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(ns.Fd())}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("bind %s id-mapped (%s; its filesystem must support id-mapped mounts): %w", source, m.Key(), err)
	}
	return nil
}
