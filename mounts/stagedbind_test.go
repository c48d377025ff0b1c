package mounts

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// TestBindStagedIn: a staged file id-mapped by its container's mappings
// reaches a jail-like namespace as it is (its owner the container's host
// id, not id-mapped twice), its stage dir id-mapped for the jail's user
// namespace; a recursive id-mapped bind of that dir is refused by the
// kernel, which is why it exists.
func TestBindStagedIn(t *testing.T) {
	requireRoot(t)
	const base, host = 3 << 30, 100000
	dir := t.TempDir()
	root, stage, src := filepath.Join(dir, "pod"), filepath.Join(dir, "stage", "tag"), filepath.Join(dir, "hosts")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = UnmountBelow(dir) })
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: host, Size: 65536}}
	if err := stageOnce(FileStage{Source: src, Dir: stage, Name: "hosts", IDMap: &IDMap{UIDs: m, GIDs: m}}); err != nil {
		t.Fatal(err)
	}
	kept := []IDRange{{host, 65536}}
	userns, err := mount.GetUsernsFD(jailMapList(base, kept), jailMapList(base, kept))
	if err != nil {
		t.Fatal(err)
	}
	defer userns.Close()
	ns, pid := jailLike(t)
	if err := BindBeneathIn(ns, root, "plain", stage, Writable, &IDMap{NS: userns}); err == nil {
		t.Error("a recursive id-mapped bind over an id-mapped staged file: no error (BindStagedIn is not needed?)")
	}
	if err := BindStagedIn(ns, root, "v", stage, "hosts", ReadOnlyRecursive, &IDMap{NS: userns}); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), root, "v")
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(in, "hosts"), &st); err != nil || st.Uid != host || st.Gid != host || st.Size == 0 {
		t.Errorf("the staged file in the jail: owner %d:%d, size %d, %v; want %d:%d, its content", st.Uid, st.Gid, st.Size, err, host, host)
	}
	if err := unix.Stat(in, &st); err != nil || st.Uid != base {
		t.Errorf("the stage dir in the jail: owner %d, %v; want %d (id-mapped for its namespace)", st.Uid, err, base)
	}
	if err := os.WriteFile(filepath.Join(in, "hosts"), nil, 0); err == nil {
		t.Error("the read-only staged file's bind is writable")
	}
	if mountedIn(t, os.Getpid(), filepath.Join(root, "v")) {
		t.Error("the bind is a mount point on the host")
	}
	if err := UnmountBeneathIn(ns, root, "v"); err != nil {
		t.Fatal(err)
	}
	if mountedIn(t, pid, filepath.Join(root, "v", "hosts")) || mountedIn(t, pid, filepath.Join(root, "v")) {
		t.Error("UnmountBeneathIn left the binds in the jail")
	}
}
