package mounts

import (
	"fmt"
	"os"
	"os/exec"
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
	if want := []string{"/a:b,c d", "/l2"}; !slices.Equal(ov.Lowers, want) || ov.Upper != "" {
		t.Errorf("lowers %q upper %q, want %q and none", ov.Lowers, ov.Upper, want)
	}
	ov, err = parseOverlayOptions(`rw,lowerdir=/l,upperdir=/s/u x,workdir=/s/w,uuid=on,fsync=volatile`)
	if err != nil || ov.Upper != "/s/u x" || !slices.Equal(ov.Layers(), []string{"/s/u x", "/l"}) {
		t.Errorf("with an upper dir: %+v, %v", ov, err)
	}
	for opts, want := range map[string]string{
		"lowerdir=/a,upperdir=/u,workdir=/w,index=on": "index=on",
		"lowerdir=/a,upperdir=u,workdir=/w":           "not an absolute path",
		"lowerdir=/a::/d":                             "not an absolute path",
		"lowerdir=a/b":                                "not an absolute path",
		"ro,redirect_dir=on":                          "no lower dirs",
		`lowerdir=/a\13`:                              "bad escape",
	} {
		if _, err := parseOverlayOptions(opts); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one with %q", opts, err, want)
		}
	}
}

// imageVolume mounts an overlay as containerd 2.4 mounts a CRI image volume
// (an active snapshot: an upper dir, volatile) below dir, over two lower
// dirs with odd names (as mountinfo escapes them): lower "a:b,c d" holds f
// (root's), sub/g (1000's) and gone; through the overlay, up is written to
// the upper dir and gone deleted (a whiteout there). It returns the mount
// point and the overlay.
func imageVolume(t *testing.T, dir string) (string, *Overlay) {
	t.Helper()
	l1, l2, mnt := filepath.Join(dir, "a:b,c d"), filepath.Join(dir, "l2"), filepath.Join(dir, "ovl")
	up, wd := filepath.Join(dir, "snap", "fs"), filepath.Join(dir, "snap", "work")
	for _, d := range []string{filepath.Join(l1, "sub"), l2, mnt, up, wd} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, uid := range map[string]int{filepath.Join(l1, "f"): 0, filepath.Join(l1, "sub", "g"): 1000, filepath.Join(l1, "gone"): 0} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`, `,`, `\,`)
	if err := unix.Mount("overlay", mnt, "overlay", 0, "lowerdir="+esc.Replace(l1)+":"+esc.Replace(l2)+",upperdir="+up+",workdir="+wd+",volatile"); err != nil {
		t.Skipf("overlay: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(mnt, "up"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "gone")); err != nil {
		t.Fatal(err)
	}
	return mnt, &Overlay{Lowers: []string{l1, l2}, Upper: up}
}

// TestOverlayOf: a path on an overlay (a CRI image volume), at its root or
// below, is found with its dirs as mounted; a path on no overlay is not.
func TestOverlayOf(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	mnt, want := imageVolume(t, dir)
	for p, sub := range map[string]string{mnt: ".", filepath.Join(mnt, "sub"): "sub"} {
		ov, err := OverlayOf(p)
		if err != nil || ov == nil {
			t.Fatalf("%s: %v, %v", p, ov, err)
		}
		if !slices.Equal(ov.Lowers, want.Lowers) || ov.Upper != want.Upper || ov.Sub != sub {
			t.Errorf("%s: %+v, want %+v with sub %q", p, ov, want, sub)
		}
	}
	if ov, err := OverlayOf(dir); ov != nil || err != nil {
		t.Errorf("a plain directory: %v, %v; want nil, nil", ov, err)
	}
}

// TestBindShiftedOverlayIn: an image volume bound read-only into a
// jail-like mount namespace shows its files there with their owners
// shifted by base (what an id-mapped bind would show qemu), what was
// written to its upper dir included and what was deleted not, and nothing
// of it is left on the host: no mount, no directory in the scratch dir,
// also when it fails.
func TestBindShiftedOverlayIn(t *testing.T) {
	requireRoot(t)
	const base = 3 << 30
	dir := t.TempDir()
	mnt, _ := imageVolume(t, dir)
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
	ov, err := OverlayOf(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if err := BindShiftedOverlayIn(ns, root, "v", ov, scratch, ReadOnlyRecursive, base); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), root, "v")
	for name, want := range map[string]uint32{"f": base, "sub/g": base + 1000, "up": base} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(in, name), &st); err != nil || st.Uid != want || st.Gid != want {
			t.Errorf("%s in the jail: owner %d:%d, %v; want %d", name, st.Uid, st.Gid, err, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(in, "gone")); err == nil {
		t.Error("a file deleted through the image volume is there in the jail")
	}
	if err := os.WriteFile(filepath.Join(in, "new"), nil, 0o644); err == nil {
		t.Error("the shifted image volume is writable in the jail")
	}
	leftOnHost()
	if err := UnmountBeneathIn(ns, root, "v"); err != nil {
		t.Fatal(err)
	}
	// A subdir of an overlay, and failures.
	ov, err = OverlayOf(filepath.Join(mnt, "sub"))
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
	if err := BindShiftedOverlayIn(ns, root, "w", ov, scratch, Writable, base); err == nil {
		t.Error("a writable share on an overlay: no error")
	}
	bad := &Overlay{Lowers: []string{filepath.Join(dir, "missing")}, Sub: "."}
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
	// A mount there at the start is the mirror's as well: it goes too.
	if err := unix.Unmount(filepath.Join(src, "early"), 0); err != nil {
		t.Fatal(err)
	}
	waitFor("the host's unmount of the earlier mount in the jail", func() bool { return !mountedIn(t, pid, filepath.Join(root, "v", "early")) })
}

// TestMirrorBound: mirroring into a bind that is not there is refused
// with an error that names it, and holds nothing (no goroutine, no
// mount).
func TestMirrorBound(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(dir, "jail", "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	ns, pid := jailLike(t)
	_, err := MirrorBound(ns, dir, "jail/src", src, Writable, nil, t.Logf)
	if err == nil || !strings.Contains(err.Error(), "jail/src below "+dir+" is not a mount's root") {
		t.Fatalf("MirrorBound on no bind: %v, want an error naming it", err)
	}
	if _, err := MirrorBound(ns, dir, "../x", src, Writable, nil, t.Logf); err == nil {
		t.Fatal("MirrorBound with a path out of its root: no error")
	}
	// The jail's bind, as package vmm makes it: the source's mount alone,
	// private; a host mount below the source then shows there.
	t.Cleanup(func() { _ = UnmountBelow(dir) })
	for _, sh := range [][]string{{"--bind", src, filepath.Join(dir, "jail", "src")}, {"--make-private", filepath.Join(dir, "jail", "src")}} {
		if out, err := exec.Command("nsenter", append([]string{"--mount=" + ns.Name(), "mount"}, sh...)...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v in the jail: %v: %s", sh, err, out)
		}
	}
	mi, err := MirrorBound(ns, dir, "jail/src", src, Writable, nil, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Stop()
	if err := os.Mkdir(filepath.Join(src, "late"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(src, "late"), "tmpfs", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !mountedIn(t, pid, filepath.Join(dir, "jail", "src", "late")); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the host's new mount is not in the jail's bind within 5 s")
		}
	}
}
