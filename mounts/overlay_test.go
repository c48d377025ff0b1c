package mounts

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestParseOverlayOptions(t *testing.T) {
	ov, err := parseOverlayOptions(`ro,lowerdir=/a\134:b\134\054c\040d:/l2,redirect_dir=on`)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/a:b,c d", "/l2"}; !slices.Equal(ov.Lowers, want) {
		t.Errorf("lowers %q, want %q", ov.Lowers, want)
	}
	for opts, want := range map[string]string{
		"lowerdir=/a,upperdir=/u,workdir=/w": "upper layer",
		"lowerdir=/a::/d":                    "not an absolute path",
		"lowerdir=a/b":                       "not an absolute path",
		"ro,redirect_dir=on":                 "no lower dirs",
		`lowerdir=/a\13`:                     "bad escape",
	} {
		if _, err := parseOverlayOptions(opts); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one with %q", opts, err, want)
		}
	}
}

// roOverlay mounts an upper-less overlay of two lower dirs with odd names
// (as mountinfo escapes them) below dir: lower "a:b,c d" holds f (root's)
// and sub/g (1000's). It returns the mount point and the lower dirs.
func roOverlay(t *testing.T, dir string) (string, []string) {
	t.Helper()
	l1, l2, mnt := filepath.Join(dir, "a:b,c d"), filepath.Join(dir, "l2"), filepath.Join(dir, "ovl")
	for _, d := range []string{filepath.Join(l1, "sub"), l2, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, uid := range map[string]int{filepath.Join(l1, "f"): 0, filepath.Join(l1, "sub", "g"): 1000} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`, `,`, `\,`)
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, "lowerdir="+esc.Replace(l1)+":"+esc.Replace(l2)); err != nil {
		t.Skipf("overlay: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt, []string{l1, l2}
}

// TestReadOnlyOverlayOf: a path on an upper-less overlay (a CRI image
// volume), at its root or below, is found with its lower dirs as mounted;
// a path on no overlay is not; an overlay with an upper layer is refused.
func TestReadOnlyOverlayOf(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	mnt, lowers := roOverlay(t, dir)
	for p, sub := range map[string]string{mnt: ".", filepath.Join(mnt, "sub"): "sub"} {
		ov, err := ReadOnlyOverlayOf(p)
		if err != nil || ov == nil {
			t.Fatalf("%s: %v, %v", p, ov, err)
		}
		if !slices.Equal(ov.Lowers, lowers) || ov.Sub != sub {
			t.Errorf("%s: lowers %q sub %q, want %q %q", p, ov.Lowers, ov.Sub, lowers, sub)
		}
	}
	if ov, err := ReadOnlyOverlayOf(dir); ov != nil || err != nil {
		t.Errorf("a plain directory: %v, %v; want nil, nil", ov, err)
	}
	rw := filepath.Join(dir, "rw")
	for _, d := range []string{"u", "w", "m"} {
		if err := os.MkdirAll(filepath.Join(rw, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", filepath.Join(rw, "m"), "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s/u,workdir=%s/w", lowers[1], rw, rw)); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(filepath.Join(rw, "m"), unix.MNT_DETACH)
	if _, err := ReadOnlyOverlayOf(filepath.Join(rw, "m")); err == nil || !strings.Contains(err.Error(), "upper layer") {
		t.Errorf("an overlay with an upper layer: %v, want it refused", err)
	}
}

// TestBindShiftedOverlayIn: a read-only overlay bound into a jail-like
// mount namespace shows its files' owners shifted by base there (what an
// id-mapped bind would show qemu), and nothing of it is left on the host:
// no mount, no directory in the scratch dir, also when it fails.
func TestBindShiftedOverlayIn(t *testing.T) {
	requireRoot(t)
	const base = 3 << 30
	dir := t.TempDir()
	mnt, _ := roOverlay(t, dir)
	root, scratch := filepath.Join(dir, "pod"), filepath.Join(dir, "scratch")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	ns, pid := jailLike(t)
	leftOnHost := func() {
		t.Helper()
		if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
			t.Errorf("left in the scratch dir: %v", ents)
		}
		if mountedIn(t, os.Getpid(), filepath.Join(root, "v")) {
			t.Error("the bind is a mount point on the host")
		}
	}
	ov, err := ReadOnlyOverlayOf(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if err := BindShiftedOverlayIn(ns, root, "v", ov, scratch, ReadOnlyRecursive, base); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), root, "v")
	for name, want := range map[string]uint32{"f": base, "sub/g": base + 1000} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(in, name), &st); err != nil || st.Uid != want || st.Gid != want {
			t.Errorf("%s in the jail: owner %d:%d, %v; want %d", name, st.Uid, st.Gid, err, want)
		}
	}
	leftOnHost()
	if err := UnmountBeneathIn(ns, root, "v"); err != nil {
		t.Fatal(err)
	}
	// A subdir of an overlay, and failures.
	ov, err = ReadOnlyOverlayOf(filepath.Join(mnt, "sub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := BindShiftedOverlayIn(ns, root, "s", ov, scratch, ReadOnlyRecursive, base); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fmt.Sprintf("/proc/%d/root", pid), root, "s", "g")); err != nil {
		t.Errorf("the overlay's subdir in the jail: %v", err)
	}
	if err := BindShiftedOverlayIn(ns, root, "z", ov, scratch, ReadOnlyRecursive, 0); err == nil {
		t.Error("no host ids: no error")
	}
	bad := &ReadOnlyOverlay{Lowers: []string{filepath.Join(dir, "missing")}, Sub: "."}
	if err := BindShiftedOverlayIn(ns, root, "y", bad, scratch, ReadOnlyRecursive, base); err == nil {
		t.Error("a missing lower dir: no error")
	}
	leftOnHost()
}

// TestMirrorBeneathIn: a mount made on the host below a mirrored bind's
// source after the bind shows in the jail-like namespace id-mapped as the
// bind is (its root-owned files owned by the mapped id), and goes there
// when the host unmounts it; what was mounted below the source before
// comes with the bind.
func TestMirrorBeneathIn(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	root, src := filepath.Join(dir, "pod"), filepath.Join(dir, "src")
	for _, d := range []string{root, filepath.Join(src, "early"), filepath.Join(src, "late")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = UnmountBelow(dir) })
	tmpfs := func(p string) {
		t.Helper()
		if err := unix.Mount("tmpfs", p, "tmpfs", 0, "mode=0700"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "flag"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmpfs(filepath.Join(src, "early"))
	ns, pid := jailLike(t)
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 65536}}
	mi, err := MirrorBeneathIn(ns, root, "v", src, Writable, &IDMap{UIDs: m, GIDs: m}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Stop()
	in := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), root, "v")
	owner := func(p string) (uint32, error) {
		var st unix.Stat_t
		err := unix.Stat(p, &st)
		return st.Uid, err
	}
	if uid, err := owner(filepath.Join(in, "early", "flag")); err != nil || uid != 1000 {
		t.Errorf("a submount from before, in the jail: owner %d, %v; want 1000", uid, err)
	}
	tmpfs(filepath.Join(src, "late"))
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5 s", what)
			}
		}
	}
	waitFor("the host's new mount in the jail", func() bool { uid, err := owner(filepath.Join(in, "late", "flag")); return err == nil && uid == 1000 })
	if err := unix.Unmount(filepath.Join(src, "late"), 0); err != nil {
		t.Fatal(err)
	}
	waitFor("the host's unmount in the jail", func() bool { _, err := owner(filepath.Join(in, "late", "flag")); return err != nil })
	if mountedIn(t, pid, filepath.Join(root, "v", "late")) {
		t.Error("the mirrored mount is still mounted in the jail")
	}
}
