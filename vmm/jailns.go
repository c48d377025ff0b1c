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
// hypervisor sees (a pod's later members, ADR 019). It returns nil when
// that VMM has no child in a mount namespace other than the caller's:
// qemu with jail = false, or libkrun (the VM is the VMM process).
func JailMountNS(vmmPid int) (*os.File, error) {
	own, err := nsID("/proc/self/ns/mnt")
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
			ns, err := openChildMountNS(vmmPid, pid)
			if err != nil || ns == nil {
				continue
			}
			st, err := ns.Stat()
			if err != nil {
				ns.Close()
				return nil, fmt.Errorf("VMM %d's child %d: %w", vmmPid, pid, err)
			}
			if id := st.Sys().(*syscall.Stat_t); id.Dev != own.Dev || id.Ino != own.Ino {
				return ns, nil
			}
			ns.Close()
		}
	}
	return nil, nil
}

// openChildMountNS opens pid's mount namespace if pid is a live child of
// parent; nil if it is not (any more).
func openChildMountNS(parent, pid int) (*os.File, error) {
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
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return nil, nil
	}
	// The pid may have been reused since pidfd_open: the namespace opened
	// is the checked child's only if that child still lives.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		ns.Close()
		if errors.Is(err, unix.ESRCH) {
			return nil, nil
		}
		return nil, fmt.Errorf("child %d: %w", pid, err)
	}
	return ns, nil
}

// nsID is the device and inode that identify a namespace.
func nsID(p string) (*syscall.Stat_t, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return st.Sys().(*syscall.Stat_t), nil
}
