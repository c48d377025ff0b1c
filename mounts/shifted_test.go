package mounts

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// TestMountShifted: an overlay over id-mapped layers shows its files'
// owners shifted by base, and what is written through it (a new file as
// base+0, a copy-up of another user's file, a deletion) lands on its
// layers with the unshifted owners, as on a plain overlay.
func TestMountShifted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const base = 3 << 30
	dir := t.TempDir()
	lower, snap, target, work := filepath.Join(dir, "lower"), filepath.Join(dir, "snap"), filepath.Join(dir, "target"), filepath.Join(dir, "work")
	for _, d := range []string{lower, filepath.Join(snap, "fs"), filepath.Join(snap, "work"), target, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, uid := range map[string]int{"root-file": 0, "user-file": 1000, "gone": 0} {
		p := filepath.Join(lower, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	m := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"index=off", "lowerdir=" + lower, "upperdir=" + filepath.Join(snap, "fs"), "workdir=" + filepath.Join(snap, "work")}}
	if err := MountShifted([]mount.Mount{m}, target, work, base, nil); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(target, unix.MNT_DETACH)
	owner := func(p string) uint32 {
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Uid
	}
	if got := owner(filepath.Join(target, "root-file")); got != base {
		t.Errorf("root-file through the overlay: owner %d, want %d", got, base)
	}
	if got := owner(filepath.Join(target, "user-file")); got != base+1000 {
		t.Errorf("user-file through the overlay: owner %d, want %d", got, base+1000)
	}
	// Written as qemu would: a new file owned by its root (base), a
	// copy-up of user-file (appended to), a deletion (a whiteout).
	if err := os.WriteFile(filepath.Join(target, "new"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(target, "new"), base, base); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(target, "user-file"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("+")
	f.Close()
	if err := os.Remove(filepath.Join(target, "gone")); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint32{"new": 0, "user-file": 1000} {
		if got := owner(filepath.Join(snap, "fs", name)); got != want {
			t.Errorf("%s in the upper dir: owner %d, want %d", name, got, want)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(snap, "fs", "gone"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR {
		t.Errorf("no whiteout for a deleted file in the upper dir: %v", err)
	}
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Errorf("the layers' mount points are left in %s: %v", work, ents)
	}
}

// TestMountShiftedKept: with a container user namespace's host ids kept
// (ADR 022), files the snapshot holds with those ids (a remapped snapshot,
// or containerd's uidmap/gidmap options, which id-map the lower dirs)
// show those ids through the overlay, and what is written as them lands
// in the upper dir with them.
func TestMountShiftedKept(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const base, host = 3 << 30, 100000
	kept := &KeptIDs{UIDs: []IDRange{{host, 65536}}, GIDs: []IDRange{{host, 65536}}}
	for _, opts := range [][]string{nil, {"uidmap=0:100000:65536", "gidmap=0:100000:65536"}} {
		dir := t.TempDir()
		lower, snap, target, work := filepath.Join(dir, "lower"), filepath.Join(dir, "snap"), filepath.Join(dir, "target"), filepath.Join(dir, "work")
		for _, d := range []string{lower, filepath.Join(snap, "fs"), filepath.Join(snap, "work"), target, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		// The image's root: host+0 in a remapped snapshot, 0 in a lower
		// containerd id-maps.
		imageRoot := host
		if opts != nil {
			imageRoot = 0
		}
		for p, uid := range map[string]int{filepath.Join(lower, "image-file"): imageRoot, filepath.Join(snap, "fs", "upper-file"): host + 1} {
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, uid, uid); err != nil {
				t.Fatal(err)
			}
		}
		m := mount.Mount{Type: "overlay", Source: "overlay", Options: append([]string{"index=off", "lowerdir=" + lower, "upperdir=" + filepath.Join(snap, "fs"), "workdir=" + filepath.Join(snap, "work")}, opts...)}
		if err := MountShifted([]mount.Mount{m}, target, work, base, kept); err != nil {
			t.Fatal(err)
		}
		owner := func(p string) uint32 {
			var st syscall.Stat_t
			if err := syscall.Lstat(p, &st); err != nil {
				t.Fatal(err)
			}
			return st.Uid
		}
		for name, want := range map[string]uint32{"image-file": host, "upper-file": host + 1} {
			if got := owner(filepath.Join(target, name)); got != want {
				t.Errorf("%v: %s through the overlay: owner %d, want %d", opts, name, got, want)
			}
		}
		if err := os.WriteFile(filepath.Join(target, "new"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(filepath.Join(target, "new"), host+7, host+7); err != nil {
			t.Fatal(err)
		}
		if got := owner(filepath.Join(snap, "fs", "new")); got != host+7 {
			t.Errorf("%v: new in the upper dir: owner %d, want %d", opts, got, host+7)
		}
		unix.Unmount(target, unix.MNT_DETACH)
	}
}
