package task

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/mounts/bootenv"
)

func TestPrepareRefuses(t *testing.T) {
	a := &Service{}
	for _, tc := range []struct {
		id  string
		env []string
	}{
		{"", nil},
		{"../x", nil},
		{"..", nil},
		{"c1", []string{"MSB_DISK_MOUNTS=d1:/run/msb/c/c1/disks/d1:ext4"}},
		{"c1", []string{"MSB_NOT_A_KEY=1"}},
	} {
		if err := a.Prepare(tc.id, tc.env); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Prepare(%q, %q) = %v, want invalid argument", tc.id, tc.env, err)
		}
	}
	if err := a.Prepare("c1", nil); err != nil {
		t.Fatalf("empty prepare: %v", err)
	}
	if err := a.Prepare("c1", nil); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second prepare: %v", err)
	}
	a.unprepare("c1")
	if err := a.Prepare("c1", nil); err != nil {
		t.Fatalf("prepare after unprepare: %v", err)
	}
}

// TestPreparePodTmpfs: the first container naming a pod tmpfs mounts it,
// the next one finds the same (a file written through the first is
// there), and removing a container leaves it (ADR 032).
func TestPreparePodTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	vol := filepath.Join(t.TempDir(), "vol")
	t.Cleanup(func() {
		for unix.Unmount(vol, unix.MNT_DETACH) == nil {
		}
	})
	env := []string{bootenv.KeyPodTmpfs + "=" + vol + ":size=1048576"}
	a := &Service{}
	if err := a.Prepare("c1", env); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "f"), []byte("c1"), 0o644); err != nil {
		t.Fatal(err)
	}
	a.unprepare("c1")
	if err := a.Prepare("c2", env); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(vol, "f")); err != nil || string(b) != "c1" {
		t.Fatalf("c2 reads %q, %v: want c1's file", b, err)
	}
	a.unprepareAll()
	n := 0
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(vol))
	for _, i := range infos {
		if i.FSType == "tmpfs" && strings.Contains(i.VFSOptions, "size=1024k") {
			n++
		}
	}
	if err != nil || n != 1 {
		t.Fatalf("%d tmpfs of 1 MiB at %s (%v), want the one kept", n, vol, err)
	}
}
