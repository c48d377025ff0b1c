package jail

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/mounts"
)

// NS is a jailed hypervisor's namespaces, as its VMM's creator needs
// them.
type NS struct {
	// Mnt is its mount namespace: mounts only the hypervisor sees (a pod's
	// later members, ADR 019) are made there.
	Mnt *os.File
	// User is its user namespace when it is not the caller's (ADR 022):
	// such mounts are id-mapped with it; IDBase is the first host id it
	// maps, Kept the host ids it maps to themselves (a container user
	// namespace's, mounts.JailMap). nil, 0 and nil when qemu is root of
	// the caller's.
	User   *os.File
	IDBase uint32
	Kept   *mounts.KeptIDs
	// Hypervisor is qemu's host id when its namespace maps the host's ids
	// to themselves (User nil then: binds are made as for a root qemu),
	// which an already id-mapped bind must map for 9p (mounts.IDMap).
	Hypervisor uint32
}

// Close closes the namespaces.
func (j *NS) Close() {
	if j != nil {
		j.Mnt.Close()
		if j.User != nil {
			j.User.Close()
		}
	}
}

// OpenNS opens the namespaces of the jailed hypervisor that the VMM
// process vmmPid runs. It returns nil when that VMM has no child in a
// mount namespace other than the caller's: qemu with jail = false, or
// libkrun (the VM is the VMM process).
func OpenNS(vmmPid int) (*NS, error) {
	own, err := nsID("/proc/self/ns/mnt")
	if err != nil {
		return nil, err
	}
	ownUser, err := nsID("/proc/self/ns/user")
	if err != nil {
		return nil, err
	}
	lists, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", vmmPid))
	if err != nil || len(lists) == 0 {
		return nil, fmt.Errorf("VMM process %d: no /proc/%d/task/*/children (it is gone, or the kernel lacks CONFIG_PROC_CHILDREN)", vmmPid, vmmPid)
	}
	for _, l := range lists {
		b, err := os.ReadFile(l)
		if err != nil {
			continue // that thread ended
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			nss, err := openChildNS(vmmPid, pid, "ns/mnt", "ns/user", "uid_map", "gid_map")
			if err != nil || nss == nil {
				continue
			}
			ub, _ := io.ReadAll(io.LimitReader(nss[2], 64<<10))
			gb, _ := io.ReadAll(io.LimitReader(nss[3], 64<<10))
			nss[2].Close()
			nss[3].Close()
			if sameNS(nss[0], own) {
				nss[0].Close()
				nss[1].Close()
				continue
			}
			j := &NS{Mnt: nss[0], User: nss[1]}
			if sameNS(nss[1], ownUser) {
				nss[1].Close()
				j.User = nil
				return j, nil
			}
			um, err := parseIDMap(ub)
			gm, gerr := parseIDMap(gb)
			if err = errors.Join(err, gerr); err == nil && (gm.base != um.base || gm.hostIDs != um.hostIDs) {
				err = fmt.Errorf("uid map %q and gid map %q differ", ub, gb)
			}
			if err != nil {
				j.Close()
				return nil, fmt.Errorf("VMM %d's hypervisor: %w", vmmPid, err)
			}
			if um.hostIDs {
				// Host ids are themselves there: binds need no id-map.
				j.User.Close()
				j.User, j.Hypervisor = nil, um.base
				return j, nil
			}
			j.IDBase = um.base
			if um.kept != nil || gm.kept != nil {
				j.Kept = &mounts.KeptIDs{UIDs: um.kept, GIDs: gm.kept}
			}
			return j, nil
		}
	}
	return nil, nil
}

// sameNS reports whether the open namespace f is id (unknown: not).
func sameNS(f *os.File, id *syscall.Stat_t) bool {
	st, err := f.Stat()
	if err != nil {
		return false
	}
	s := st.Sys().(*syscall.Stat_t)
	return s.Dev == id.Dev && s.Ino == id.Ino
}

// openChildNS opens pid's /proc files of the given names (its namespaces,
// ns/TYPE) if pid is a live child of parent; nil if it is not (any more).
func openChildNS(parent, pid int, types ...string) ([]*os.File, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, nil
	}
	defer unix.Close(pidfd)
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, nil
	}
	// "pid (comm) state ppid …"; comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return nil, nil
	}
	if f := strings.Fields(string(stat[i+1:])); len(f) < 2 || f[1] != strconv.Itoa(parent) {
		return nil, nil
	}
	var nss []*os.File
	closeAll := func() {
		for _, f := range nss {
			f.Close()
		}
	}
	for _, t := range types {
		ns, err := os.Open(fmt.Sprintf("/proc/%d/%s", pid, t))
		if err != nil {
			closeAll()
			return nil, nil
		}
		nss = append(nss, ns)
	}
	// The pid may have been reused since pidfd_open: the namespaces opened
	// are the checked child's only if that child still lives.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		closeAll()
		if errors.Is(err, unix.ESRCH) {
			return nil, nil
		}
		return nil, fmt.Errorf("child %d: %w", pid, err)
	}
	return nss, nil
}

// nsID is the device and inode that identify a namespace.
func nsID(p string) (*syscall.Stat_t, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return st.Sys().(*syscall.Stat_t), nil
}

// idMap is a jailed qemu's uid (or gid) map, as NewUserNS writes it.
// Either shifted: its ids 0-65535 are the VM's range base… and each kept
// host range is itself (mounts.JailMap); or hostIDs: the host's ids below
// IDBase are themselves and qemu runs as id IDBase, which is the
// VM's base (ADR 022, for shares that cannot be id-mapped).
type idMap struct {
	base    uint32
	kept    []mounts.IDRange
	hostIDs bool
}

// qemuID is the id qemu runs as in its namespace: root of a shifted one;
// in a host-ids one, an id that is no host user's, since its id 0 is host
// root.
func (m idMap) qemuID() uint32 {
	if m.hostIDs {
		return IDBase
	}
	return 0
}

// lines is m in /proc/PID/uid_map form.
func (m idMap) lines() string {
	if m.hostIDs {
		return fmt.Sprintf("0 0 %d\n%d %d %d\n", uint32(IDBase), uint32(IDBase), m.base, IDSize)
	}
	var b strings.Builder
	for _, e := range mounts.JailMap(m.base, m.kept) {
		fmt.Fprintf(&b, "%d %d %d\n", e.ContainerID, e.HostID, e.Size)
	}
	return b.String()
}

// parseIDMap reads a jailed qemu's uid_map or gid_map as idMap.lines
// writes it. Anything else is an error: namespace id 0 as host root
// outside a host-ids map (the helper never joined a namespace of msb's),
// or a line that is neither of the VM's range nor kept.
func parseIDMap(b []byte) (idMap, error) {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var ms [][3]uint64
	for _, l := range lines {
		f := strings.Fields(l)
		var m [3]uint64
		if len(f) != 3 {
			return idMap{}, fmt.Errorf("id map line %q", l)
		}
		for i := range f {
			var err error
			if m[i], err = strconv.ParseUint(f[i], 10, 32); err != nil {
				return idMap{}, fmt.Errorf("id map line %q", l)
			}
		}
		ms = append(ms, m)
	}
	if len(ms) == 2 && ms[0] == [3]uint64{0, 0, IDBase} && ms[1][0] == IDBase && ms[1][1] >= IDBase && ms[1][2] == IDSize {
		return idMap{base: uint32(ms[1][1]), hostIDs: true}, nil
	}
	var j idMap
	for _, m := range ms {
		if m[0] == 0 {
			j.base = uint32(m[1])
		}
	}
	if j.base < IDBase {
		return idMap{}, fmt.Errorf("id map %q: id 0 is not one of msb's jail ids", strings.TrimSpace(string(b)))
	}
	for _, m := range ms {
		switch {
		case m[0] == m[1] && m[0] != 0:
			j.kept = append(j.kept, mounts.IDRange{Start: uint32(m[0]), Size: uint32(m[2])})
		case m[1] == uint64(j.base)+m[0] && m[0]+m[2] <= IDSize:
		default:
			return idMap{}, fmt.Errorf("id map %q: line %d %d %d is neither the VM's range nor kept", strings.TrimSpace(string(b)), m[0], m[1], m[2])
		}
	}
	return j, nil
}
