package guest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// RootDiskFile is the read-only guest root an image of a kernel of msb's own
// boots from (virtio-blk, root=/dev/vda) instead of the initramfs: one file
// every VM shares, read into guest memory page by page as the guest touches
// it, where an initramfs is copied whole into each VM's RAM (twice: the
// archive and the unpacked root).
const RootDiskFile = "rootfs.img"

// A fixed filesystem UUID and directory hash seed.
const (
	rootDiskUUID = "6d73622d-726f-4f74-8000-000000000001"
	rootDiskSeed = "6d73622d-6861-4368-8000-000000000001"
)

// writeRootDisk writes entries as an ext4 image (no journal: it is only
// ever mounted read-only) to OutDir/RootDiskFile, atomically. It stages the
// tree in work and runs mke2fs -d (e2fsprogs).
func writeRootDisk(ctx context.Context, entries []CpioEntry, work, outDir string) (int64, error) {
	stage := filepath.Join(work, "rootdisk")
	var total int64
	for _, e := range entries {
		p := filepath.Join(stage, e.Name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return 0, err
		}
		perm := os.FileMode(e.Mode & 0o7777)
		var err error
		switch e.Mode & sIFMT {
		case sIFDIR:
			if err = os.MkdirAll(p, perm); err == nil {
				err = os.Chmod(p, perm|modeBits(e.Mode))
			}
		case sIFREG:
			if err = os.WriteFile(p, e.Data, perm); err == nil {
				err = os.Chmod(p, perm)
			}
			total += int64(len(e.Data))
		case sIFLNK:
			err = os.Symlink(string(e.Data), p)
		case sIFCHR:
			err = unix.Mknod(p, unix.S_IFCHR|uint32(perm), int(unix.Mkdev(e.Major, e.Minor)))
		default:
			err = fmt.Errorf("unsupported mode %o", e.Mode)
		}
		if err != nil {
			return 0, fmt.Errorf("guest: root disk: %s: %w", e.Name, err)
		}
	}
	// The files, their metadata and ext4's own: a quarter more and 4 MiB.
	size := (total+total/4)>>10 + 4<<10
	f, err := os.CreateTemp(outDir, "."+RootDiskFile+".*")
	if err != nil {
		return 0, err
	}
	tmp := f.Name()
	f.Close()
	defer os.Remove(tmp)
	cmd := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0",
		"-O", "^has_journal,^resize_inode", "-L", "msb-root", "-U", rootDiskUUID,
		"-E", "root_owner=0:0,hash_seed="+rootDiskSeed, "-d", stage, tmp, fmt.Sprintf("%dk", size))
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("guest: root disk: mke2fs (e2fsprogs): %v: %s", err, bytes2str(out))
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, filepath.Join(outDir, RootDiskFile)); err != nil {
		return 0, err
	}
	return size << 10, nil
}

// modeBits returns the setuid, setgid and sticky bits of a cpio mode as
// Go's.
func modeBits(m uint32) os.FileMode {
	var fm os.FileMode
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	return fm
}

func bytes2str(b []byte) string { return string(bytes.TrimSpace(b)) }
