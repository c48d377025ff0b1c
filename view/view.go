// Package view shows the processes whose pids msb reports for a container
// the container's rootfs as their root (ADR 027). Clients take the pid msb
// reports for a container — the VMM process's — for the container's, and go into its mount namespace or read its
// /proc/<pid>/root: Podman copies `podman cp` of a running container at
// "/" in that namespace, and `nsenter -t <pid> -m` is the usual way in.
// Those are the namespace and root of the process's main thread. So the
// VMM's main thread alone moves into a mount namespace of its own whose
// root is the container's rootfs (vmm.LaunchConfig.View; an empty read-only
// tmpfs for a VM without one), and stays there, blocked, while
// every other thread, and every process the VMM starts, stays in the
// host's. A client then copies into and out of the rootfs, as with runc,
// never the host's "/". Not yet: a pool VM's VMM (its claimer's rootfs
// comes after its host cgroup is redone in the claimer's, which the
// cgroup library does through /proc/self).
package view

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Run moves the calling thread, the main one (locked to it since the
// binary's init), into the view of rootfs and runs fn on another
// goroutine, in the host's mount namespace, returning what it returns:
// the shim's anchor and a pod member's relay, pids clients see.
func Run(rootfs string, fn func() int) int {
	if rootfs == "" || !filepath.IsAbs(rootfs) {
		fmt.Fprintf(os.Stderr, "the container's view: rootfs %q must be an absolute path\n", rootfs)
		return 1
	}
	if unix.Gettid() != unix.Getpid() {
		fmt.Fprintln(os.Stderr, "the container's view: not on the main thread (lock it in the binary's init)")
		return 1
	}
	if err := Enter(rootfs, ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	done := make(chan int)
	go func() { done <- fn() }()
	return <-done
}

// viewDir is the mount point, in the VM's state dir, of the empty view
// of a VM without a rootfs (only in the main thread's namespace).
const viewDir = "view"

// Enter moves this thread, the main one, into a mount namespace of its
// own rooted at dir (empty: an empty read-only tmpfs in runtimeDir), with
// nothing of the host's mounts left there: the VMM process's main thread
// (vmmproc.Main).
func Enter(dir, runtimeDir string) error {
	if dir == "" {
		dir = filepath.Join(runtimeDir, viewDir)
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("the container's view: %w", err)
		}
	}
	// CLONE_FS too: this thread's root and working directory alone change.
	if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
		return fmt.Errorf("the container's view: unshare: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("the container's view: make / a slave: %w", err)
	}
	var err error
	if dir == filepath.Join(runtimeDir, viewDir) {
		err = unix.Mount("tmpfs", dir, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=4k,mode=0555")
	} else {
		err = unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, "") // a mount point, for pivot_root
	}
	if err != nil {
		return fmt.Errorf("the container's view on %s: %w", dir, err)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("the container's view: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("the container's view: pivot_root to %s: %w", dir, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("the container's view: detach the host's root: %w", err)
	}
	return unix.Chdir("/")
}
