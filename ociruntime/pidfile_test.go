package ociruntime

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestWritePidFileNoSymlink: a pid file is written as runc writes it. A
// symlink at the pid file's path is replaced, not followed, and symlinks
// planted at the temp name runc used (".<name>") or anywhere else in the
// directory are left alone; their targets are never written.
func TestWritePidFileNoSymlink(t *testing.T) {
	dir, victimDir := t.TempDir(), t.TempDir()
	victim := filepath.Join(victimDir, "victim")
	if err := os.WriteFile(victim, []byte("intact"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pid")
	for _, l := range []string{path, filepath.Join(dir, ".pid"), filepath.Join(dir, ".pid.tmp")} {
		if err := os.Symlink(victim, l); err != nil {
			t.Fatal(err)
		}
	}
	// A dangling symlink at the temp name: O_CREAT without O_EXCL would
	// create its target.
	dangling := filepath.Join(victimDir, "created")
	if err := os.Symlink(dangling, filepath.Join(dir, ".pid.1")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if err := writePidFile(path, 4242+i); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "intact" {
		t.Fatalf("the symlinks' target was written: %q", b)
	}
	if _, err := os.Lstat(dangling); err == nil {
		t.Fatal("a dangling symlink's target was created")
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Fatalf("pid file: %v, %v", fi, err)
	}
	if b, _ := os.ReadFile(path); string(b) != strconv.Itoa(4242+19) {
		t.Fatalf("pid file holds %q", b)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 4 { // pid and the three planted symlinks left
		t.Fatalf("temp files left: %v", ents)
	}
	if err := writePidFile(filepath.Join(dir, "nodir", "pid"), 1); err == nil {
		t.Fatal("no error for a pid file in a missing directory")
	}
}
