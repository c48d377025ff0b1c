package ociruntime

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/vmm"
)

// A container whose spec names a namespace of another msb container under
// the same --root joins that container's VM (ADR 024): Podman's pod
// members name their infra container's namespaces by the pid
// msb-runtime reported for it (its VMM), or by the network namespace's
// bind-mounted path.

// memberNamespaces are the namespace types a member may share with its
// owner, with their /proc/<pid>/ns names.
var memberNamespaces = map[specs.LinuxNamespaceType]string{
	specs.NetworkNamespace: "net",
	specs.IPCNamespace:     "ipc",
	specs.UTSNamespace:     "uts",
	specs.PIDNamespace:     "pid",
}

// nsIdent is a namespace's identity: the device and inode of its nsfs
// file.
type nsIdent struct{ dev, ino uint64 }

// nsIdentOf identifies the namespace path names (following the
// /proc/<pid>/ns magic link or a bind mount of it); an error when path
// is no namespace.
func nsIdentOf(path string) (nsIdent, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nsIdent{}, err
	}
	if fs.Type != unix.NSFS_MAGIC {
		return nsIdent{}, fmt.Errorf("%s is not a namespace", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsIdent{}, err
	}
	return nsIdent{dev: st.Dev, ino: st.Ino}, nil
}

// findOwner returns the running container under o.Root whose VM spec
// joins, and the namespace types it joins there; nil when spec names no
// msb container's namespace (then specconv refuses any host namespace
// path, ADR 009/011). A namespace path names an owner when:
//
//   - for ipc, uts and pid, it is /proc/<pid>/ns/<type> where pid is
//     the container's pid (its VMM process, or a member's pid process)
//     still running with the recorded start time, and the path's
//     namespace is that process's;
//   - for the network namespace, it is the namespace of that pid by
//     any path (compared by nsfs device and inode: Podman names its
//     bind mount under /run/netns), and not msb-runtime's own: the
//     host's is never an owner's.
//
// Only host-owned records (in the --root state dirs) and /proc are read;
// nothing the guest can write names the owner.
func findOwner(ctx context.Context, o Options, spec *specs.Spec) (*container, []specs.LinuxNamespaceType, error) {
	if spec.Linux == nil {
		return nil, nil, nil
	}
	var paths []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		if _, ok := memberNamespaces[ns.Type]; ok && ns.Path != "" {
			paths = append(paths, ns)
		}
	}
	if len(paths) == 0 {
		return nil, nil, nil
	}
	cands := liveContainers(o)
	if len(cands) == 0 {
		return nil, nil, nil
	}
	hostNet, err := nsIdentOf("/proc/self/ns/net")
	if err != nil {
		return nil, nil, fmt.Errorf("own network namespace: %w", err)
	}
	var owner *container
	var joined []specs.LinuxNamespaceType
	for _, ns := range paths {
		c := ownerOf(cands, ns, hostNet)
		if c == nil {
			continue
		}
		if c.rec.Owner != "" {
			// A member's pid process names its owner's VM.
			oc, err := load(o, c.rec.Owner)
			if err != nil || !oc.vmmAlive() {
				return nil, nil, fmt.Errorf("linux.namespaces: %s names pod member %q, whose VM's container %q is gone", ns.Path, c.rec.ID, c.rec.Owner)
			}
			c = oc
		}
		if owner != nil && owner.rec.ID != c.rec.ID {
			return nil, nil, fmt.Errorf("linux.namespaces: the spec joins namespaces of two msb containers (%q and %q): a container runs in one VM, join one container's namespaces", owner.rec.ID, c.rec.ID)
		}
		owner = c
		joined = append(joined, ns.Type)
	}
	if owner == nil {
		return nil, nil, nil
	}
	if !owner.rec.Pod {
		return nil, nil, fmt.Errorf("linux.namespaces: container %q was created without a pod share (by an older msb-runtime): no other container can join its VM; recreate it", owner.rec.ID)
	}
	if st := owner.status(ctx); st != statusRunning && st != statusCreated && st != statusPaused {
		return nil, nil, fmt.Errorf("linux.namespaces: container %q, whose namespaces the spec joins, is %s: start it first", owner.rec.ID, st)
	}
	return owner, joined, nil
}

// ownerOf is the candidate whose namespace ns names, or nil.
func ownerOf(cands []*container, ns specs.LinuxNamespace, hostNet nsIdent) *container {
	name := memberNamespaces[ns.Type]
	id, err := nsIdentOf(ns.Path)
	if err != nil {
		return nil
	}
	p := filepath.Clean(ns.Path)
	for _, c := range cands {
		own := fmt.Sprintf("/proc/%d/ns/%s", c.rec.Pid, name)
		cid, err := nsIdentOf(own)
		if err != nil || cid != id || !c.vmmAlive() {
			continue
		}
		// The VMM's ipc, uts and pid namespaces are the host's: only the
		// pid names them as the container's. Its network namespace is
		// the container's own, by whatever path, and never the host's.
		if ns.Type == specs.NetworkNamespace {
			if id != hostNet {
				return c
			}
		} else if p == own {
			return c
		}
	}
	return nil
}

// liveContainers are the containers under o.Root whose pid process runs.
func liveContainers(o Options) []*container {
	recs, _ := filepath.Glob(filepath.Join(vmm.StateDirPath(o.Root, "*"), recordFile))
	var out []*container
	for _, r := range recs {
		c, err := load(o, filepath.Base(filepath.Dir(r)))
		if err == nil && c.vmmAlive() {
			out = append(out, c)
		}
	}
	return out
}

// liveMembers are the ids of the containers that joined owner's VM and
// whose pid process still runs.
func liveMembers(o Options, owner string) []string {
	var ids []string
	for _, c := range liveContainers(o) {
		if c.rec.Owner == owner {
			ids = append(ids, c.rec.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// errLiveMembers refuses the delete of a container whose VM members
// still run in.
func errLiveMembers(id string, members []string) error {
	return fmt.Errorf("container %q holds the VM of pod members that still run (%s): stop and delete them first (podman pod stop and pod rm do)", id, strings.Join(members, ", "))
}
