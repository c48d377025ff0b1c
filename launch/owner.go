package launch

import (
	"fmt"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/specconv"
)

// A container whose spec names a namespace of another running msb
// container joins that container's VM (ADR 024, 030): Podman's pod
// members, Docker's and nerdctl's `container:<id>` modes name the
// namespaces by the task pid msb reported (a VMM, an anchor or a member's
// relay), or the network namespace by a bind-mounted path. The shim and
// msb-runtime's CLI find the owner here, each from its own records.

// JoinableNamespaces are the namespace types a member may share with the
// container whose VM it joins, with their /proc/<pid>/ns names.
var JoinableNamespaces = map[specs.LinuxNamespaceType]string{
	specs.NetworkNamespace: "net",
	specs.IPCNamespace:     "ipc",
	specs.UTSNamespace:     "uts",
	specs.PIDNamespace:     "pid",
}

// JoinCandidate is a running msb container another spec may name.
type JoinCandidate struct {
	ID string
	// VM is the container whose VM it runs in: ID for a VM's own.
	VM string
	// Pid is its task pid, checked alive (with its start time) by the
	// caller: only host-owned records and /proc name a candidate.
	Pid int
}

// NamesNamespaces says whether spec names a path for a namespace type a
// member may share: only then can FindJoin find an owner, so a caller
// may skip reading its candidates.
func NamesNamespaces(spec *specs.Spec) bool {
	if spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if _, ok := JoinableNamespaces[ns.Type]; ok && ns.Path != "" {
			return true
		}
	}
	return false
}

// FindJoin returns the VM (its container's id) whose namespaces spec's
// net, ipc, uts and pid paths name among cands, and the types they name;
// "" when none does (then specconv refuses any host namespace path, ADR
// 009/011). A path names a candidate when:
//
//   - for ipc, uts and pid, it is /proc/<pid>/ns/<type> of the
//     candidate's pid, and the path's namespace is that process's: the
//     VMM's own ipc, uts and pid namespaces are the host's, so only the
//     pid names them as the container's;
//   - for the network namespace, it is the namespace of the candidate's
//     pid by any path (compared by nsfs device and inode: Podman names
//     its bind mount under /run/netns, CRI its CNI namespace), and not
//     the caller's own: the host's is never a container's.
//
// Paths of two different VMs are refused.
func FindJoin(spec *specs.Spec, cands []JoinCandidate) (string, []specs.LinuxNamespaceType, error) {
	if spec.Linux == nil || len(cands) == 0 {
		return "", nil, nil
	}
	hostNet, err := nsIdentOf("/proc/self/ns/net")
	if err != nil {
		return "", nil, fmt.Errorf("own network namespace: %w", err)
	}
	vm := ""
	var joined []specs.LinuxNamespaceType
	for _, ns := range spec.Linux.Namespaces {
		if _, ok := JoinableNamespaces[ns.Type]; !ok || ns.Path == "" {
			continue
		}
		c := ownerOf(cands, ns, hostNet)
		if c == nil {
			continue
		}
		if vm != "" && vm != c.VM {
			return "", nil, fmt.Errorf("linux.namespaces: the spec joins namespaces of two msb VMs (containers %q and %q): a container runs in one VM, join one container's namespaces", vm, c.VM)
		}
		vm = c.VM
		joined = append(joined, ns.Type)
	}
	return vm, joined, nil
}

// GuestNamespaces are the guest paths of the namespaces of the types in
// joined: those of the owner's init, guest pid guestPid.
func GuestNamespaces(joined []specs.LinuxNamespaceType, guestPid uint32) map[specs.LinuxNamespaceType]string {
	out := map[specs.LinuxNamespaceType]string{}
	for _, t := range joined {
		out[t] = fmt.Sprintf("/proc/%d/ns/%s", guestPid, JoinableNamespaces[t])
	}
	return out
}

// CheckMember refuses what a member cannot have in its owner's running
// VM (ADR 024): a size or backend of its own (annotations that differ
// from the owner's), or limits past the VM's size, as an update past it
// is refused.
func CheckMember(spec *specs.Spec, owner string, ownerAnnotations map[string]string, size specconv.VMSize) error {
	for _, k := range []string{specconv.AnnotationVCPUs, specconv.AnnotationMemoryMiB, specconv.AnnotationBackend} {
		if v, ok := spec.Annotations[k]; ok && v != ownerAnnotations[k] {
			return fmt.Errorf("annotations %s=%q: the container joins the running VM of %q (%d vCPUs, %d MiB), which keeps its own size and backend: drop the annotation, or give it to %q (a pod's first container)",
				k, v, owner, size.VCPUs, size.MemoryMiB, owner)
		}
	}
	if spec.Linux == nil {
		return nil
	}
	if err := size.CheckUpdate(spec.Linux.Resources); err != nil {
		return fmt.Errorf("the container joins the running VM of %q, which keeps its size: %w", owner, err)
	}
	return nil
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

// ownerOf is the candidate whose namespace ns names, or nil.
func ownerOf(cands []JoinCandidate, ns specs.LinuxNamespace, hostNet nsIdent) *JoinCandidate {
	name := JoinableNamespaces[ns.Type]
	id, err := nsIdentOf(ns.Path)
	if err != nil {
		return nil
	}
	p := filepath.Clean(ns.Path)
	for i, c := range cands {
		own := fmt.Sprintf("/proc/%d/ns/%s", c.Pid, name)
		if cid, err := nsIdentOf(own); err != nil || cid != id {
			continue
		}
		if ns.Type == specs.NetworkNamespace {
			if id != hostNet {
				return &cands[i]
			}
		} else if p == own {
			return &cands[i]
		}
	}
	return nil
}
