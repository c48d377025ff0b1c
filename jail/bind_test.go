package jail

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/mounts"
)

// TestJailIDMappedFile: a VM's own staged file that its container's
// mappings id-map (CRI's /etc/hosts in a user namespace) is bound into
// the jail as it is, its stage dir id-mapped for qemu's namespace, which
// keeps the container's host ids (ADR 022).
func TestJailIDMappedFile(t *testing.T) {
	if os.Geteuid() != 0 || !userNSBuilt {
		t.Skip("needs root and cgo")
	}
	const host = 100000
	dir := t.TempDir()
	stage, src, root := filepath.Join(dir, "files", "tag"), filepath.Join(dir, "hosts"), filepath.Join(dir, "jail")
	if err := os.WriteFile(src, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: host, Size: 65536}}
	unstage, err := mounts.Prepare([]mounts.FileStage{{Source: src, Dir: stage, Name: "hosts", IDMap: &mounts.IDMap{UIDs: m, GIDs: m}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unstage() })
	ids, err := AllocIDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ids.Release()
	kept := &mounts.KeptIDs{UIDs: []mounts.IDRange{{Start: host, Size: 65536}}, GIDs: []mounts.IDRange{{Start: host, Size: 65536}}}
	userns, err := NewUserNS(ids.base, kept, false)
	if err != nil {
		t.Fatal(err)
	}
	defer userns.Close()
	type owners struct{ file, dir unix.Stat_t }
	done := make(chan error, 1)
	var got owners
	go func() {
		// This thread's own mount namespace; it ends with the goroutine
		// (never unlocked), and its mounts with it.
		runtime.LockOSThread()
		done <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return err
			}
			if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
				return err
			}
			if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=1m"); err != nil {
				return err
			}
			b := &builder{root: root, userns: int(userns.Fd())}
			if err := b.bindAll([]Bind{{Path: stage, IDMap: true, ReadOnly: true, File: "hosts"}}); err != nil {
				return err
			}
			if err := unix.Stat(filepath.Join(root, stage, "hosts"), &got.file); err != nil {
				return err
			}
			return unix.Stat(filepath.Join(root, stage), &got.dir)
		}()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got.file.Uid != host || got.file.Gid != host || got.file.Size == 0 {
		t.Errorf("the staged file in the jail: %d:%d, size %d; want %d:%d and its content", got.file.Uid, got.file.Gid, got.file.Size, host, host)
	}
	if got.dir.Uid != ids.base {
		t.Errorf("the stage dir in the jail: owner %d, want %d (id-mapped for qemu's namespace)", got.dir.Uid, ids.base)
	}
}
