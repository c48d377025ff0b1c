package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// JailMountNS opens the mount namespace of the jailed hypervisor that the
// VMM process vmmPid runs, so that its creator can make mounts only the
// hypervisor sees (a pod's later members, ADR 019), and the hypervisor's
// user namespace when it is not the caller's (such mounts are id-mapped
// with it, ADR 022). It returns nil, nil when that VMM has no child in a
// mount namespace other than the caller's: qemu with jail = false, or
// libkrun (the VM is the VMM process).
func JailMountNS(vmmPid int) (mnt, user *os.File, err error) {
	own, err := nsID("/proc/self/ns/mnt")
	if err != nil {
		return nil, nil, err
	}
	ownUser, err := nsID("/proc/self/ns/user")
	if err != nil {
		return nil, nil, err
	}
	lists, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", vmmPid))
	if err != nil || len(lists) == 0 {
		return nil, nil, fmt.Errorf("VMM process %d: no /proc/%d/task/*/children (it is gone, or the kernel lacks CONFIG_PROC_CHILDREN)", vmmPid, vmmPid)
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
			nss, err := openChildNS(vmmPid, pid, "mnt", "user")
			if err != nil || nss == nil {
				continue
			}
			if !sameNS(nss[0], own) {
				if sameNS(nss[1], ownUser) {
					nss[1].Close()
					nss[1] = nil
				}
				return nss[0], nss[1], nil
			}
			nss[0].Close()
			nss[1].Close()
		}
	}
	return nil, nil, nil
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

// openChildNS opens pid's namespaces of the given types if pid is a live
// child of parent; nil if it is not (any more).
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
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, t))
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
