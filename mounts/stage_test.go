package mounts

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func inode(t *testing.T, p string) (dev, ino uint64) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return uint64(st.Dev), st.Ino
}

func writeFile(t *testing.T, p, content string) string {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

// entries lists everything under dir, relative, for "nothing left behind".
func entries(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// crossDevDir returns a directory on another filesystem than t.TempDir, or
// skips the test.
func crossDevDir(t *testing.T) (local, other string) {
	local = t.TempDir()
	other, err := os.MkdirTemp("/dev/shm", "msb-test-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	ld, _ := inode(t, local)
	od, _ := inode(t, other)
	if ld == od {
		t.Skip("/dev/shm and the temp dir are on the same filesystem; cannot provoke EXDEV")
	}
	return local, other
}

func TestStageFileCrossDevice(t *testing.T) {
	local, other := crossDevDir(t)
	src := writeFile(t, filepath.Join(other, "cfg"), "content")

	// Read-only or read-write: bind-mounted, the very file on the other
	// filesystem (the share's read-only export keeps the guest out).
	requireRoot(t)
	ro := filepath.Join(local, "ro", "tag")
	rost, err := stageFile(FileStage{Source: src, Dir: ro, Name: "cfg", ReadOnly: true})
	if err != nil {
		t.Fatalf("ro cross-device: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(ro, "cfg")); err != nil || string(b) != "content" {
		t.Fatalf("ro staged: %q %v", b, err)
	}
	if err := rost.undo(); err != nil {
		t.Fatal(err)
	}
	rw := filepath.Join(local, "rw", "tag")
	st, err := stageFile(FileStage{Source: src, Dir: rw, Name: "cfg"})
	if err != nil {
		t.Fatalf("rw cross-device: %v", err)
	}
	staged := filepath.Join(rw, "cfg")
	sd, si := inode(t, src)
	if d, i := inode(t, staged); d != sd || i != si {
		t.Fatal("staged rw file is not the source (bind mount)")
	}
	writeFile(t, staged, "from guest")
	if b, _ := os.ReadFile(src); string(b) != "from guest" {
		t.Fatalf("source after a write to the staged file: %q", b)
	}
	writeFile(t, src, "from host")
	if b, _ := os.ReadFile(staged); string(b) != "from host" {
		t.Fatalf("staged file after a write to the source: %q", b)
	}
	// Staging again into the same place is refused, not mounted over.
	if err := stageOnce(FileStage{Source: src, Dir: rw, Name: "cfg"}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second rw stage: %v", err)
	}
	if err := st.undo(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(local, "rw")); !os.IsNotExist(err) {
		t.Fatalf("left %s behind: %v", filepath.Join(local, "rw"), err)
	}
	if b, _ := os.ReadFile(src); string(b) != "from host" {
		t.Fatalf("undo touched the source: %q", b)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("staging a read-write file bind-mounts it: needs root")
	}
}

// A rw file left mounted (its stager was SIGKILLed) is what UnmountBelow
// finds; RemoveAllUnmounted then removes the state dir, never the source.
func TestStagedBindUnmountBelow(t *testing.T) {
	requireRoot(t)
	tmp := t.TempDir()
	src := writeFile(t, filepath.Join(tmp, "hosts"), "keep")
	state := filepath.Join(tmp, "state")
	if err := stageOnce(FileStage{Source: src, Dir: filepath.Join(state, "files", "t"), Name: "hosts"}); err != nil {
		t.Fatal(err)
	}
	if err := RemoveAllUnmounted(state); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("state dir: %v", err)
	}
	if b, err := os.ReadFile(src); err != nil || string(b) != "keep" {
		t.Fatalf("source %q, %v", b, err)
	}
}

// An id-mapped file bind (CRI's /etc/hosts in a pod with a user
// namespace) is staged id-mapped: the stage shows the source's owner
// shifted, writes reach the source, and undoing it leaves the source.
func TestStageFileIDMapped(t *testing.T) {
	requireRoot(t)
	tmp := t.TempDir()
	src := writeFile(t, filepath.Join(tmp, "hosts"), "keep")
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 65536}}
	f := FileStage{Source: src, Dir: filepath.Join(tmp, "stage", "t"), Name: "hosts", IDMap: &IDMap{UIDs: m, GIDs: m}}
	st, err := stageFile(f)
	if err != nil {
		t.Fatal(err)
	}
	staged := filepath.Join(f.Dir, f.Name)
	var s unix.Stat_t
	if err := unix.Stat(staged, &s); err != nil || s.Uid != 1000 || s.Gid != 1000 {
		t.Fatalf("staged owner %d:%d, %v; want 1000:1000", s.Uid, s.Gid, err)
	}
	if err := os.WriteFile(staged, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := st.undo(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(src); err != nil || string(b) != "new" {
		t.Fatalf("source %q, %v", b, err)
	}
}

func TestStageFileRefusals(t *testing.T) {
	tmp := t.TempDir()
	src := writeFile(t, filepath.Join(tmp, "f"), "x")
	stage := filepath.Join(tmp, "stage")
	for _, c := range []struct {
		f    FileStage
		want string
	}{
		{FileStage{Source: src, Dir: filepath.Join(stage, "a"), Name: "a:b"}, "':'"},
		{FileStage{Source: src, Dir: filepath.Join(stage, "a"), Name: "a;b"}, "';'"},
		{FileStage{Source: src, Dir: filepath.Join(stage, "a"), Name: "a/b"}, "'/'"},
		{FileStage{Source: src, Dir: filepath.Join(stage, "a"), Name: ".."}, `".."`},
		{FileStage{Source: src, Dir: filepath.Join(stage, "a"), Name: ""}, "empty"},
		{FileStage{Source: src, Dir: "rel", Name: "f"}, "absolute"},
		{FileStage{Source: filepath.Join(tmp, "missing"), Dir: filepath.Join(stage, "a"), Name: "f"}, "no such file"},
		{FileStage{Source: src, Dir: filepath.Join(src, "sub"), Name: "f"}, "not a directory"},
	} {
		err := stageOnce(c.f)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("stageOnce(%+v) = %v, want error with %q", c.f, err, c.want)
		}
	}
	if _, err := os.Stat(stage); !os.IsNotExist(err) {
		t.Fatalf("stage dir left behind: %v", err)
	}
}

func TestLockDisk(t *testing.T) {
	img := writeFile(t, filepath.Join(t.TempDir(), "disk.img"), "")
	ro1, err := LockDisk(Disk{Path: img, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ro2, err := LockDisk(Disk{Path: img, ReadOnly: true})
	if err != nil {
		t.Fatalf("two shared locks must coexist: %v", err)
	}
	_, err = LockDisk(Disk{Path: img})
	if err == nil || !strings.Contains(err.Error(), "in use by another sandbox") || !strings.Contains(err.Error(), img) {
		t.Fatalf("exclusive while shared: %v", err)
	}
	if err := ro1(); err != nil {
		t.Fatal(err)
	}
	if err := ro1(); err != nil {
		t.Fatalf("release twice: %v", err)
	}
	if err := ro2(); err != nil {
		t.Fatal(err)
	}
	rw, err := LockDisk(Disk{Path: img})
	if err != nil {
		t.Fatalf("exclusive after release: %v", err)
	}
	if _, err := LockDisk(Disk{Path: img, ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("shared while exclusive: %v", err)
	}
	if _, err := LockDisk(Disk{Path: img}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("exclusive while exclusive: %v", err)
	}
	if err := rw(); err != nil {
		t.Fatal(err)
	}
	if _, err := LockDisk(Disk{Path: filepath.Join(t.TempDir(), "missing")}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing image: %v", err)
	}
}

func TestPrepare(t *testing.T) {
	tmp := t.TempDir()
	stage := filepath.Join(tmp, "state", "stage")
	a := writeFile(t, filepath.Join(tmp, "a"), "a")
	b := writeFile(t, filepath.Join(tmp, "b"), "b")
	img1 := writeFile(t, filepath.Join(tmp, "1.img"), "")
	img2 := writeFile(t, filepath.Join(tmp, "2.img"), "")
	files := []FileStage{
		{Source: a, Dir: filepath.Join(stage, "t1"), Name: "a"},
		{Source: b, Dir: filepath.Join(stage, "t2"), Name: "b", ReadOnly: true},
	}
	disks := []Disk{{Tag: "d1", Path: img1}, {Tag: "d2", Path: img2, ReadOnly: true}}
	release, err := Prepare(files, disks)
	if err != nil {
		t.Fatal(err)
	}
	if got := entries(t, filepath.Join(tmp, "state")); len(got) != 5 {
		t.Fatalf("staged: %q", got)
	}
	if _, err := LockDisk(Disk{Path: img1, ReadOnly: true}); err == nil {
		t.Fatal("img1 not locked")
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil {
		t.Fatalf("release twice: %v", err)
	}
	if _, err := os.Stat(filepath.Join(tmp, "state")); !os.IsNotExist(err) {
		t.Fatalf("state dir left after release: %v", err)
	}
	rel, err := LockDisk(Disk{Path: img1})
	if err != nil {
		t.Fatalf("img1 still locked after release: %v", err)
	}
	rel()
	if _, err := os.Stat(a); err != nil {
		t.Fatalf("release removed the source: %v", err)
	}
}

func TestPrepareKeepsCallerDirs(t *testing.T) {
	tmp := t.TempDir()
	stage := filepath.Join(tmp, "stage")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	a := writeFile(t, filepath.Join(tmp, "a"), "a")
	release, err := Prepare([]FileStage{{Source: a, Dir: filepath.Join(stage, "t"), Name: "a"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, stage); len(got) != 0 {
		t.Fatalf("left: %q", got)
	}
	if _, err := os.Stat(stage); err != nil {
		t.Fatalf("caller's stage dir removed: %v", err)
	}
}

func TestPrepareSameImageTwice(t *testing.T) {
	tmp := t.TempDir()
	img := writeFile(t, filepath.Join(tmp, "disk.img"), "")
	link := filepath.Join(tmp, "alias.img")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	hard := filepath.Join(tmp, "hard.img")
	if err := os.Link(img, hard); err != nil {
		t.Fatal(err)
	}
	for _, second := range []string{img, link, hard} {
		_, err := Prepare(nil, []Disk{{Path: img, ReadOnly: true}, {Path: second, ReadOnly: true}})
		if err == nil || !strings.Contains(err.Error(), "disks[1]") || !strings.Contains(err.Error(), "same image as disks[0]") {
			t.Errorf("%s: %v", second, err)
		}
	}
	if _, err := Prepare(nil, []Disk{{Path: filepath.Join(tmp, "missing")}}); err == nil || !strings.Contains(err.Error(), "disks[0]") {
		t.Errorf("missing: %v", err)
	}
}

func TestPrepareUndoesOnFailure(t *testing.T) {
	tmp := t.TempDir()
	state := filepath.Join(tmp, "state")
	a := writeFile(t, filepath.Join(tmp, "a"), "a")
	img := writeFile(t, filepath.Join(tmp, "disk.img"), "")
	busy := writeFile(t, filepath.Join(tmp, "busy.img"), "")
	files := []FileStage{
		{Source: a, Dir: filepath.Join(state, "s", "t1"), Name: "a"},
		{Source: a, Dir: filepath.Join(state, "s", "t2"), Name: "a"},
	}

	// A file that cannot be staged (bad name) after others succeeded.
	bad := append(append([]FileStage{}, files...), FileStage{Source: a, Dir: filepath.Join(state, "s", "t3"), Name: "x:y"})
	_, err := Prepare(bad, []Disk{{Path: img}})
	if err == nil || !strings.Contains(err.Error(), "files[2]") {
		t.Fatalf("bad file: %v", err)
	}
	assertClean(t, state, img)

	// A missing source after others succeeded.
	missing := append(append([]FileStage{}, files...), FileStage{Source: filepath.Join(tmp, "nope"), Dir: filepath.Join(state, "s", "t3"), Name: "n"})
	if _, err := Prepare(missing, []Disk{{Path: img}}); err == nil {
		t.Fatal("missing source accepted")
	}
	assertClean(t, state, img)

	// Two files staged to the same place.
	dup := append(append([]FileStage{}, files...), files[0])
	if _, err := Prepare(dup, nil); err == nil || !strings.Contains(err.Error(), "files[2]") {
		t.Fatalf("duplicate stage: %v", err)
	}
	assertClean(t, state, img)

	// A busy disk after another was locked.
	hold, err := LockDisk(Disk{Path: busy})
	if err != nil {
		t.Fatal(err)
	}
	defer hold()
	_, err = Prepare(files, []Disk{{Path: img}, {Path: busy, ReadOnly: true}})
	if err == nil || !strings.Contains(err.Error(), "disks[1]") || !strings.Contains(err.Error(), "in use by another sandbox") {
		t.Fatalf("busy disk: %v", err)
	}
	assertClean(t, state, img)
}

// assertClean checks that nothing is left in the state dir and that img is
// unlocked.
func assertClean(t *testing.T, state, img string) {
	t.Helper()
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("state dir left behind: %q", entries(t, state))
	}
	rel, err := LockDisk(Disk{Path: img})
	if err != nil {
		t.Fatalf("disk still locked: %v", err)
	}
	rel()
}

// stageOnce stages f and leaves it for the test's cleanup.
func stageOnce(f FileStage) error {
	_, err := stageFile(f)
	return err
}
