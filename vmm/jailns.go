package vmm

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
)

// JailNS is a jailed hypervisor's namespaces, as its VMM's creator needs
// them.
type JailNS struct {
	// Mnt is its mount namespace: mounts only the hypervisor sees (a pod's
	// later members, ADR 019) are made there.
	Mnt *os.File
	// User is its user namespace when it is not the caller's (ADR 022):
	// such mounts are id-mapped with it; IDBase is the first host id it
	// maps. nil and 0 when qemu is root of the caller's.
	User   *os.File
	IDBase uint32
}

// Close closes the namespaces.
func (j *JailNS) Close() {
	if j != nil {
		j.Mnt.Close()
		if j.User != nil {
			j.User.Close()
		}
	}
}

// OpenJailNS opens the namespaces of the jailed hypervisor that the VMM
// process vmmPid runs. It returns nil when that VMM has no child in a
// mount namespace other than the caller's: qemu with jail = false, or
// libkrun (the VM is the VMM process).
func OpenJailNS(vmmPid int) (*JailNS, error) {
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
			nss, err := openChildNS(vmmPid, pid, "ns/mnt", "ns/user", "uid_map")
			if err != nil || nss == nil {
				continue
			}
			b, _ := io.ReadAll(io.LimitReader(nss[2], 4096))
			nss[2].Close()
			if sameNS(nss[0], own) {
				nss[0].Close()
				nss[1].Close()
				continue
			}
			j := &JailNS{Mnt: nss[0], User: nss[1]}
			if sameNS(nss[1], ownUser) {
				nss[1].Close()
				j.User = nil
			} else if f := strings.Fields(string(b)); len(f) >= 3 && f[0] == "0" {
				base, err := strconv.ParseUint(f[1], 10, 32)
				if err != nil {
					j.Close()
					return nil, fmt.Errorf("VMM %d's hypervisor: uid_map %q", vmmPid, b)
				}
				j.IDBase = uint32(base)
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
