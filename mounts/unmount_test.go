package mounts

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// isMounted reports whether dir is a mount point (by its parent's device).
func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		t.Fatal(err)
	}
	return st.Dev != parent.Dev
}

// canary makes a host directory with a tmpfs mounted on canary/mnt and a
// file in each, as a guest's symlink target; check fails the test unless
// both are untouched.
func canary(t *testing.T) (dir string, check func()) {
	t.Helper()
	dir = t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	for _, f := range []string{filepath.Join(dir, "file"), filepath.Join(mnt, "file")} {
		if err := os.WriteFile(f, []byte("canary"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, func() {
		t.Helper()
		if !isMounted(t, mnt) {
			t.Fatalf("the host's mount %s was detached", mnt)
		}
		for _, f := range []string{filepath.Join(dir, "file"), filepath.Join(mnt, "file")} {
			if b, err := os.ReadFile(f); err != nil || string(b) != "canary" {
				t.Fatalf("host canary %s: %q, %v", f, b, err)
			}
		}
	}
}

// The shim unmounts a container's rootfs with UnmountBelow: the mount on
// the directory itself goes too, stacked mounts and mounts below it as
// well. No symlink is followed: not at the directory itself (refused),
// not below it.
func TestUnmountBelowTheDirItself(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(rootfs, 0o700); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // two tmpfs stacked on rootfs
		if err := unix.Mount("tmpfs", rootfs, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = UnmountBelow(rootfs) })
	if err := os.Mkdir(filepath.Join(rootfs, "proc"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(rootfs, "proc"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	host, intact := canary(t)
	if err := os.Symlink(host, filepath.Join(rootfs, "host")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(host, link); err != nil {
		t.Fatal(err)
	}
	if err := UnmountBelow(link); err == nil {
		t.Error("UnmountBelow of a symlink: no error")
	}
	intact()
	if err := UnmountBelow(rootfs); err != nil {
		t.Fatal(err)
	}
	if isMounted(t, rootfs) {
		t.Fatal("rootfs is still a mount point")
	}
	intact()
	if err := UnmountBelow(filepath.Join(dir, "gone")); err != nil {
		t.Fatalf("missing dir: %v", err)
	}
}

// TestUnmountAllBeneathSwapped is issue 21's case 1: guest root swaps a
// pod member's dir for a symlink to a host directory that holds a mount.
// Unmounting and removing the member refuses it; the host's mount and
// files stay, and so does the member's own bind, moved aside, until the
// pod dir goes, found by its mount ID.
func TestUnmountAllBeneathSwapped(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	pod, src := filepath.Join(base, "pod"), filepath.Join(base, "src")
	for _, d := range []string{pod, src} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = UnmountBelow(base) })
	host, intact := canary(t)
	d, err := MkdirBeneath(pod, "m")
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := BindBeneath(pod, "m/v", src, Writable, nil); err != nil {
		t.Fatal(err)
	}
	// The guest: its member dir moved aside, a symlink in its place; a
	// FIFO, socket and symlinks in place of other members' dirs.
	if err := os.Rename(filepath.Join(pod, "m"), filepath.Join(pod, "m.moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(host, filepath.Join(pod, "m")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(pod, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(pod, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if err := os.Symlink(host+"/mnt", filepath.Join(pod, "deep")); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"m", "fifo", "sock", "deep", "m/mnt"} {
		if err := UnmountAllBeneath(pod, rel); err == nil {
			t.Errorf("UnmountAllBeneath(%s): no error for a swapped entry", rel)
		}
		if err := RemoveAllUnmountedBeneath(pod, rel); err == nil {
			t.Errorf("RemoveAllUnmountedBeneath(%s): no error for a swapped entry", rel)
		}
		intact()
	}
	if _, err := os.Lstat(filepath.Join(pod, "m")); err != nil {
		t.Errorf("the refused entry was not left for the teardown: %v", err)
	}
	// The VM's teardown: the pod dir with all in it.
	if err := RemoveAllUnmounted(pod); err != nil {
		t.Fatal(err)
	}
	intact()
	if _, err := os.Lstat(pod); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pod dir left: %v", err)
	}
	if ents, _ := os.ReadDir(src); len(ents) != 0 {
		t.Fatalf("the bind's source changed: %v", ents)
	}
}

// TestUnmountAllBeneathRace: the guest swaps member dirs for symlinks to a
// host directory with a mount while the host unmounts and removes them:
// the host's mount and files stay, every member is gone or refused.
func TestUnmountAllBeneathRace(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	pod, src := filepath.Join(base, "pod"), filepath.Join(base, "src")
	for _, d := range []string{pod, src} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = UnmountBelow(base) })
	host, intact := canary(t)
	const n = 100
	for i := 0; i < n; i++ {
		m := fmt.Sprintf("m%d", i)
		d, err := MkdirBeneath(pod, m)
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
		if err := BindBeneath(pod, m+"/v", src, Writable, nil); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the guest
		defer wg.Done()
		for i := 0; ; i = (i + 1) % n {
			select {
			case <-stop:
				return
			default:
			}
			m := filepath.Join(pod, fmt.Sprintf("m%d", i))
			if os.Rename(m, m+".moved") == nil {
				_ = os.Symlink(host, m)
			}
		}
	}()
	refused := 0
	for i := 0; i < n; i++ {
		if err := RemoveAllUnmountedBeneath(pod, fmt.Sprintf("m%d", i)); err != nil {
			refused++
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d of %d members refused (swapped)", refused, n)
	intact()
	if err := RemoveAllUnmounted(pod); err != nil {
		t.Fatal(err)
	}
	intact()
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), pod) {
		t.Fatalf("mounts left below %s", pod)
	}
}

// TestRemoveAllUnmounted: special files and symlinks in a tree the guest
// wrote are unlinked, never opened or followed; a tree deeper than the
// fds one removal holds goes; a mount the unmount could not reach stops
// the removal instead of being emptied.
func TestRemoveAllUnmounted(t *testing.T) {
	requireRoot(t)
	host, intact := canary(t)
	dir := filepath.Join(t.TempDir(), "state")
	deep := dir
	for i := 0; i < 3*maxDepth+5; i++ {
		deep = filepath.Join(deep, "d")
	}
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, deep} {
		if err := unix.Mkfifo(filepath.Join(p, "fifo"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(filepath.Join(p, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(host, filepath.Join(p, "host")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(host+"/file", filepath.Join(p, "file")); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveAllUnmounted(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("left: %v", err)
	}
	intact()

	// A mount below the tree that the removal meets (as one in a mount
	// namespace's view it did not unmount would be) is not emptied.
	dir = filepath.Join(t.TempDir(), "state")
	sub := filepath.Join(dir, "sub")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(sub, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(sub, "keep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	parent, err := unix.Open(filepath.Dir(dir), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(parent)
	if err := removeAt(parent, "state"); err == nil || !errors.Is(err, unix.EXDEV) {
		t.Fatalf("removal through a mount point: %v, want EXDEV", err)
	}
	if _, err := os.Stat(filepath.Join(sub, "keep")); err != nil {
		t.Fatalf("the mount's content was removed: %v", err)
	}
}
