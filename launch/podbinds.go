package launch

import (
	"fmt"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/mounts"
)

// PodBinds makes and undoes pod members' binds below a pod VM's pod dir
// where the VM's hypervisor sees them (ADR 007): in its jail's mount
// namespace only when it has one (ADR 019), so a member's volume is no
// mount point on the host that its owner could not remove; else (jail =
// false, libkrun) in the host's. The containerd shim's pod members and
// msb-runtime's (ADR 024) both go through it.
type PodBinds struct {
	podDir string
	// jail is the jailed hypervisor's namespaces, or nil; binds are
	// id-mapped with its user namespace when it has one (ADR 022).
	jail *jail.NS
}

// OpenPodBinds opens the binds of the pod VM whose VMM process is vmmPid
// and whose pod dir (on the host) is podDir.
func OpenPodBinds(podDir string, vmmPid int) (*PodBinds, error) {
	j, err := jail.OpenNS(vmmPid)
	if err != nil {
		return nil, err
	}
	return &PodBinds{podDir: podDir, jail: j}, nil
}

// HostPodBinds reaches podDir on the host only: for the removal of a
// member whose VM (and its jail's mounts with it) is gone.
func HostPodBinds(podDir string) *PodBinds { return &PodBinds{podDir: podDir} }

// Close lets the jail's namespaces go.
func (b *PodBinds) Close() { b.jail.Close() }

// Expose binds a member's shares below <pod dir>/<id>/<tag>: shifted is
// its rootfs when mounted over id-mapped layers (bound as it is, else
// ""), scratch a host directory of its own the guest cannot write (for a
// shifted read-only overlay). It returns the mirrors of its propagated
// binds, which the caller keeps running while the member lives; on error
// the caller withdraws what was bound (Withdraw).
func (b *PodBinds) Expose(id string, shares []mounts.Share, shifted, scratch string, logf func(string, ...any)) ([]*mounts.Mirror, error) {
	// The pod dir is the guest's to write: every step below it goes
	// through mounts' *Beneath calls, which follow no symlink.
	d, err := mounts.MkdirBeneath(b.podDir, id)
	if err != nil {
		return nil, fmt.Errorf("pod dir: %w", err)
	}
	d.Close()
	var mirrors []*mounts.Mirror
	for _, sh := range shares {
		mi, err := b.bind(id+"/"+sh.Tag, sh, sh.HostPath == shifted, scratch, logf)
		if err != nil {
			for _, m := range mirrors {
				m.Stop()
			}
			return nil, fmt.Errorf("expose %s in the pod share: %w", sh.HostPath, err)
		}
		if mi != nil {
			mirrors = append(mirrors, mi)
		}
	}
	return mirrors, nil
}

// Withdraw unmounts a member's shares (by tag) and removes its directory below
// the pod dir. The guest may have moved or swapped anything there: the
// member dir is reached, its host mounts found and removed without
// following a symlink; a member dir the guest swapped for a symlink or
// special file is refused and left for the VM's teardown, as is one with
// mounts left. Removing it on the host also detaches what a jail still
// mounts on it.
func (b *PodBinds) Withdraw(id string, tags []string, logf func(string, ...any)) error {
	for _, tag := range tags {
		if err := b.unmount(id + "/" + tag); err != nil {
			logf("pod member %s: %v", id, err)
		}
	}
	return mounts.RemoveAllUnmountedBeneath(b.podDir, id)
}

// bind binds sh below rel: id-mapped for the jail's user namespace
// unless shifted (a rootfs overlay over id-mapped layers already) or
// id-mapped by its container's mappings (bound with those); a
// read-only share on an overlay (a CRI image volume, which cannot be
// id-mapped) is shifted like a rootfs; a propagated bind is mirrored (the Mirror it
// returns, else nil).
func (b *PodBinds) bind(rel string, sh mounts.Share, shifted bool, scratch string, logf func(string, ...any)) (*mounts.Mirror, error) {
	if b.jail == nil {
		return nil, mounts.BindBeneath(b.podDir, rel, sh.HostPath, sh.Access(), sh.IDMap)
	}
	idmap := sh.IDMap
	if b.jail.User != nil && sh.IDMappedFile != "" {
		return nil, mounts.BindStagedIn(b.jail.Mnt, b.podDir, rel, sh.HostPath, sh.IDMappedFile, sh.Access(), &mounts.IDMap{NS: b.jail.User})
	}
	if b.jail.User != nil && idmap != nil {
		// Already id-mapped by its container's mappings, whose host ids
		// qemu's namespace keeps as they are: bound so, with the
		// hypervisor's own id (its namespace's root) mapped for 9p.
		if !b.jail.Kept.Covers(idmap.UIDs, idmap.GIDs) {
			return nil, fmt.Errorf("%s: an id-mapped bind (a container user namespace, %s) whose host ids the pod VM's hypervisor does not keep: give the pod's sandbox the same user namespace", sh.HostPath, idmap.Key())
		}
		idmap = &mounts.IDMap{UIDs: idmap.UIDs, GIDs: idmap.GIDs, Hypervisor: b.jail.IDBase}
		if sh.Propagated {
			return mounts.MirrorBeneathIn(b.jail.Mnt, b.podDir, rel, sh.HostPath, sh.Access(), idmap, logf)
		}
	} else if idmap != nil && b.jail.Hypervisor != 0 {
		// qemu's namespace has the host's ids (ADR 022): plain binds, but
		// an id-mapped one maps qemu's own host id for 9p.
		idmap = &mounts.IDMap{UIDs: idmap.UIDs, GIDs: idmap.GIDs, Hypervisor: b.jail.Hypervisor}
	} else if b.jail.User != nil && !shifted {
		ov, err := mounts.OverlayOf(sh.HostPath)
		if err != nil {
			return nil, fmt.Errorf("%s cannot be id-mapped for the pod VM's unprivileged hypervisor: %w", sh.HostPath, err)
		}
		if ov != nil {
			return nil, mounts.BindShiftedOverlayIn(b.jail.Mnt, b.podDir, rel, ov, scratch, sh.Access(), b.jail.IDBase)
		}
		idmap = &mounts.IDMap{NS: b.jail.User}
		if sh.Propagated {
			return mounts.MirrorBeneathIn(b.jail.Mnt, b.podDir, rel, sh.HostPath, sh.Access(), idmap, logf)
		}
	}
	return nil, mounts.BindBeneathIn(b.jail.Mnt, b.podDir, rel, sh.HostPath, sh.Access(), idmap)
}

func (b *PodBinds) unmount(rel string) error {
	if b.jail == nil {
		return mounts.UnmountBeneath(b.podDir, rel)
	}
	return mounts.UnmountBeneathIn(b.jail.Mnt, b.podDir, rel)
}
