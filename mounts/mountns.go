package mounts

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// A jailed qemu has a mount namespace of its own (ADR 013), and a pod
// member's binds are made there only (ADR 019): bound in the host's
// namespace, a member's volume would hold its host directory's submounts
// as mount points there, and the volume's owner could not remove them
// (EBUSY) while the container runs; runc's binds, in the container's own
// namespace, never do that. A mount point in another namespace does not
// block a removal on the host: the removal detaches it there.

// InMountNS runs fn on an OS thread of its own that has joined the mount
// namespace ns (an open /proc/<pid>/ns/mnt). The thread then has its own
// root and working directory, unlike the process's other threads, so it
// is ended with fn's goroutine, never reused.
func InMountNS(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the goroutine's end ends the thread.
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread would not end but stay parked in ns, and
			// /proc/self is the main thread's view: hold it, go on
			// another thread.
			defer runtime.UnlockOSThread()
			errc <- InMountNS(ns, fn)
			return
		}
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare the filesystem attributes: %w", err)
			return
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("join mount namespace %s: %w", ns.Name(), err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// jailAttrs are set on every mount of a bind made in a jail, as on the
// jail's own binds: its hypervisor executes nothing and opens no device
// or set-id program there, and mounts propagate from the host to the
// jail, never back (a shared source's clone would be the source's peer).
var jailAttrs = unix.MountAttr{
	Attr_set:    unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC,
	Propagation: unix.MS_SLAVE,
}

// BindBeneathIn is BindBeneath with the bind made in the mount namespace
// ns only: source is cloned here (in the caller's namespace, where it is
// named) and the mount point made here too (in ns, root may be id-mapped
// for the hypervisor's user namespace, where the caller's ids have no
// name), the detached clone attached below root as ns sees it, walked
// with the same no-symlink discipline.
func BindBeneathIn(ns *os.File, root, rel, source string, access Access, idmap *IDMap) error {
	tree, err := cloneTree(source, access, idmap, &jailAttrs)
	if err != nil {
		return err
	}
	defer unix.Close(tree)
	return attachBeneathIn(ns, root, rel, tree, source)
}

// privateJailAttrs are jailAttrs for a bind nothing propagates into (a
// Mirror's).
var privateJailAttrs = unix.MountAttr{Attr_set: jailAttrs.Attr_set, Propagation: unix.MS_PRIVATE}

// attachBeneathIn attaches the detached tree (a clone of source) on the
// new directory rel below root in the mount namespace ns.
func attachBeneathIn(ns *os.File, root, rel string, tree int, source string) error {
	dir, err := MkdirBeneath(root, rel)
	if err != nil {
		return err
	}
	dir.Close()
	return InMountNS(ns, func() error {
		dir, err := openBeneath(root, rel, false)
		if err != nil {
			return err
		}
		defer dir.Close()
		return attachTo(dir, tree, source)
	})
}

// UnmountBeneathIn is UnmountBeneath in the mount namespace ns. That
// namespace's /proc (a jail's) has no entry for this process, so the
// opened mount's magic link is reached through this namespace's procfs:
// its fd dir, opened first, is the thread's working directory.
func UnmountBeneathIn(ns *os.File, root, rel string) error {
	fds, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /proc/self/fd: %w", err)
	}
	defer unix.Close(fds)
	return InMountNS(ns, func() error {
		if err := unix.Fchdir(fds); err != nil {
			return fmt.Errorf("chdir to /proc/self/fd: %w", err)
		}
		return unmountBeneath(root, rel, func(fd int) error {
			return unix.Unmount(strconv.Itoa(fd), unix.MNT_DETACH)
		})
	})
}
