package mounts

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The shim unmounts a container's rootfs with UnmountBelow: the mount on
// the directory itself goes too, stacked mounts and mounts below it as
// well, also when the path reaches it through a symlink.
func TestUnmountBelowTheDirItself(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
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
	if err := os.Mkdir(filepath.Join(rootfs, "proc"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(rootfs, "proc"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if err := UnmountBelow(filepath.Join(link, "rootfs")); err != nil {
		t.Fatal(err)
	}
	var st, parent unix.Stat_t
	if err := unix.Stat(rootfs, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(dir, &parent); err != nil {
		t.Fatal(err)
	}
	if st.Dev != parent.Dev {
		t.Fatal("rootfs is still a mount point")
	}
	if err := UnmountBelow(filepath.Join(dir, "gone")); err != nil {
		t.Fatalf("missing dir: %v", err)
	}
}
