package mounts

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// jailLike starts a process in mount and pid namespaces of its own with its
// own /proc, as the jail has (where this process has no /proc entry), and
// returns its mount namespace and pid.
func jailLike(t *testing.T) (*os.File, int) {
	t.Helper()
	cmd := exec.Command("unshare", "--mount", "--propagation", "slave", "--pid", "--fork", "--mount-proc", "sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Skipf("unshare: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/root/proc/1/comm", pid))
		if string(comm) == "sleep\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the namespace's own /proc did not come up")
		}
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns, pid
}

// mountedIn reports whether p is a mount point in pid's mount namespace.
func mountedIn(t *testing.T, pid int, p string) bool {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ms, err := mountinfo.GetMountsFromReader(f, mountinfo.SingleEntryFilter(p))
	if err != nil {
		t.Fatal(err)
	}
	return len(ms) > 0
}

// TestBindBeneathIn: a bind made in another mount namespace is there, with
// the source's submounts, read-only as asked, and is no mount point on the
// host, whose owner can then unmount the source's submount and remove the
// source while the bind exists (critest's read-only mount specs);
// UnmountBeneathIn undoes it there.
func TestBindBeneathIn(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	root, src := filepath.Join(base, "pod"), filepath.Join(base, "src")
	sub := filepath.Join(src, "sub")
	for _, d := range []string{root, src, sub} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = UnmountBelow(base) })
	if err := os.WriteFile(filepath.Join(sub, "s"), []byte("in-sub"), 0o644); err != nil {
		t.Fatal(err)
	}
	own, _ := os.Readlink("/proc/self/ns/mnt")
	ns, pid := jailLike(t)
	in := fmt.Sprintf("/proc/%d/root", pid)

	if err := BindBeneathIn(ns, root, "v", src, ReadOnlyRecursive, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(in, root, "v", "sub", "s")); err != nil || string(b) != "in-sub" {
		t.Fatalf("the bind's submount in the namespace: %q, %v", b, err)
	}
	for _, f := range []string{"v/f", "v/sub/f"} {
		if err := os.WriteFile(filepath.Join(in, root, f), nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write %s in the namespace: %v, want EROFS", f, err)
		}
	}
	if !mountedIn(t, pid, filepath.Join(root, "v")) {
		t.Fatal("no mount in the namespace")
	}
	if mountedIn(t, os.Getpid(), filepath.Join(root, "v")) {
		t.Fatal("the bind is a mount point on the host")
	}
	if err := UnmountBeneathIn(ns, root, "v"); err != nil {
		t.Fatal(err)
	}
	if mountedIn(t, pid, filepath.Join(root, "v")) {
		t.Fatal("still mounted in the namespace after UnmountBeneathIn")
	}

	if err := BindBeneathIn(ns, root, "w", src, ReadOnlyTop, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(in, root, "w", "sub", "x"), nil, 0o644); err != nil {
		t.Errorf("a submount of a read-only-top bind must stay writable: %v", err)
	}
	if err := unix.Unmount(sub, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(src); err != nil {
		t.Fatalf("the source cannot be removed while the bind exists in the namespace: %v", err)
	}
	// The main thread (whose view /proc/self gives) stays in the host's
	// namespace.
	if now, _ := os.Readlink("/proc/self/ns/mnt"); now != own {
		t.Fatalf("/proc/self/ns/mnt is %s, was %s", now, own)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), root+"/") {
		t.Errorf("mounts below %s on the host:\n%s", root, mi)
	}
}

// TestBindBeneathInIDMapped: an id-mapped member bind shows the source's
// owners shifted in the namespace, and a file created there as root (what
// the hypervisor's 9p server does before it sets the guest's owner) can be
// created and given a mapped owner, which lands unshifted on disk.
func TestBindBeneathInIDMapped(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	root, src := filepath.Join(base, "pod"), filepath.Join(base, "src")
	for _, d := range []string{root, src} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = UnmountBelow(base) })
	ns, pid := jailLike(t)
	in := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), root, "v")
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 65536}}
	if err := BindBeneathIn(ns, root, "v", src, Writable, &IDMap{UIDs: m, GIDs: m}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(in, "f"), &st); err != nil || st.Uid != 1000 || st.Gid != 1000 {
		t.Fatalf("owner through the id-mapped bind: %d:%d, %v; want 1000:1000", st.Uid, st.Gid, err)
	}
	if err := os.WriteFile(filepath.Join(in, "new"), nil, 0o644); err != nil {
		t.Fatalf("create as root through the id-mapped bind: %v", err)
	}
	if err := os.Lchown(filepath.Join(in, "new"), 1005, 1005); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Join(src, "new"), &st); err != nil || st.Uid != 5 || st.Gid != 5 {
		t.Fatalf("owner on disk: %d:%d, %v; want 5:5", st.Uid, st.Gid, err)
	}
}

// TestBindBeneathInHypervisor: a container's id-mapped bind for a jailed
// qemu (ADR 022) maps qemu's own host id (its namespace's root,
// IDMap.Hypervisor) too: 9p creates each file as that id before it gives
// the file the guest's owner, which the kernel refuses for an id the
// mount does not map.
func TestBindBeneathInHypervisor(t *testing.T) {
	requireRoot(t)
	const hv = 3 << 30
	base := t.TempDir()
	root, src := filepath.Join(base, "pod"), filepath.Join(base, "src")
	for _, d := range []string{root, src} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(src, 0o777); err != nil { // the creating thread has no DAC override
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = UnmountBelow(base) })
	ns, pid := jailLike(t)
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	create := func(rel string) error {
		dir, err := unix.Open(filepath.Join(fmt.Sprintf("/proc/%d/root", pid), root, rel), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(dir)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		unix.Setfsuid(hv)
		unix.Setfsgid(hv)
		defer unix.Setfsuid(0)
		defer unix.Setfsgid(0)
		fd, err := unix.Openat(dir, "new", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	for _, c := range []struct {
		rel string
		hv  uint32
		ok  bool
	}{{"root", 0, false}, {"jailed", hv, true}} {
		if err := BindBeneathIn(ns, root, c.rel, src, Writable, &IDMap{UIDs: m, GIDs: m, Hypervisor: c.hv}); err != nil {
			t.Fatal(err)
		}
		err := create(c.rel)
		if (err == nil) != c.ok || err != nil && !errors.Is(err, unix.EOVERFLOW) {
			t.Errorf("create as host id %d through a bind for hypervisor %d: %v, want success %v", uint32(hv), c.hv, err, c.ok)
		}
		if err == nil {
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(src, "new"), &st); err != nil || st.Uid != hypervisorID {
				t.Errorf("owner on disk: %d, %v; want %d", st.Uid, err, uint32(hypervisorID))
			}
		}
	}
}
