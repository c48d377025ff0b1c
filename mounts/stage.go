package mounts

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/mounts/bootenv"
)

// Share is a host directory exported to the guest under Tag.
type Share struct {
	Tag      string
	HostPath string
	ReadOnly bool
	// MultiDevs: HostPath can span several host mounts (vmm.Share).
	MultiDevs bool
	// ReadOnlyTop: ReadOnly covers HostPath's own mount only, its host
	// submounts keep their access (runc's "ro" on an rbind, not "rro").
	// Pod members' binds honour it; a VM's own read-only share is
	// read-only as a whole.
	ReadOnlyTop bool
	// IDMap makes a pod member's bind id-mapped (specconv refuses it for
	// a VM's own directory share, which is exported as it is).
	IDMap *IDMap
	// Propagated: a bind whose host submounts propagate into the container
	// later (shared, rshared, slave, rslave): a pod member's is kept in
	// step with the host (Mirror) when it is id-mapped for a jailed qemu.
	Propagated bool
	// IDMappedFile names the file staged in HostPath id-mapped by its
	// FileStage's IDMap: a jailed qemu's id-mapped bind of HostPath takes
	// its mount apart, as it is (BindStagedIn).
	IDMappedFile string
}

// Access is how a bind of the share's directory is made read-only.
func (s Share) Access() Access {
	switch {
	case !s.ReadOnly:
		return Writable
	case s.ReadOnlyTop:
		return ReadOnlyTop
	}
	return ReadOnlyRecursive
}

// FileStage asks for Source to be staged as Dir/Name; Dir is then exported
// as a share, because 9p and virtio-fs export directories, not files.
type FileStage struct {
	Source   string
	Dir      string
	Name     string
	ReadOnly bool
	// IDMap makes the staging bind id-mapped.
	IDMap *IDMap
}

// Disk is a disk image or block device attached with virtio-blk; Tag becomes
// its serial so the guest can find it.
type Disk struct {
	Tag      string
	Path     string
	Format   string
	ReadOnly bool
}

// staged records what stageFile created, so it can be undone.
type staged struct {
	file    string
	mountID int      // file is a bind mount of the source with this ID (0: none)
	dirs    []string // created directories, parents first
}

// undo unmounts and removes what stageFile made. The guest can write the
// staged file's directory (its share) and swap the file for a symlink, so
// the bind is found there without following one and unmounted only when
// it is still the mount stageFile made.
func (s staged) undo() error {
	var errs []error
	if s.mountID != 0 {
		dir, err := unix.Open(filepath.Dir(s.file), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount staged file %s: %w", s.file, err)
		}
		if err == nil {
			_, err = unmountID(dir, filepath.Base(s.file), s.mountID)
			unix.Close(dir)
			if err != nil {
				// Never remove a file something is still mounted on.
				return fmt.Errorf("unmount staged file %s: %w", s.file, err)
			}
		}
	}
	if s.file != "" {
		if err := os.Remove(s.file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for i := len(s.dirs) - 1; i >= 0; i-- {
		if err := os.Remove(s.dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func stageFile(f FileStage) (staged, error) {
	var st staged
	if err := bootenv.CheckFileName(f.Name); err != nil {
		return st, fmt.Errorf("staging %s: name %q: %w", f.Source, f.Name, err)
	}
	if !filepath.IsAbs(f.Dir) {
		return st, fmt.Errorf("staging %s: dir %q must be absolute", f.Source, f.Dir)
	}
	dirs, err := mkdirAll(f.Dir, 0o700)
	st.dirs = dirs
	if err != nil {
		return st, errors.Join(fmt.Errorf("staging %s: %w", f.Source, err), st.undo())
	}
	if err := bindFile(f.Source, filepath.Join(f.Dir, f.Name), f.IDMap, &st); err != nil {
		return st, errors.Join(fmt.Errorf("staging %s: %w", f.Source, err), st.undo())
	}
	return st, nil
}

// bindFile bind-mounts the regular file src onto a new empty file dst,
// id-mapped when idmap is not nil, recording in st what to undo.
func bindFile(src, dst string, idmap *IDMap, st *staged) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	st.file = dst
	if idmap != nil {
		tree, err := cloneTree(src, Writable, idmap, nil)
		if err != nil {
			return err
		}
		defer unix.Close(tree)
		if err := unix.MoveMount(tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("bind-mount onto %s: %w", dst, err)
		}
	} else if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount onto %s: %w (a read-write single-file bind is staged by a bind mount, which needs CAP_SYS_ADMIN; or bind the file's directory instead)", dst, err)
	}
	id, err := mountID(dst)
	if err != nil {
		_ = unix.Unmount(dst, unix.MNT_DETACH) // not yet shared with a guest
		return fmt.Errorf("bind-mount onto %s: %w", dst, err)
	}
	st.mountID = id
	return nil
}

// mountID is the ID of the mount at path, which is not yet the guest's.
func mountID(path string) (int, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st); err != nil {
		return 0, err
	}
	if st.Mask&unix.STATX_MNT_ID == 0 {
		return 0, fmt.Errorf("statx of %s gave no mount ID", path)
	}
	return int(st.Mnt_id), nil
}

// mkdirAll is os.MkdirAll that reports which directories it created, so a
// failed Prepare can remove exactly those and nothing the caller owned.
func mkdirAll(dir string, perm fs.FileMode) ([]string, error) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return nil, fmt.Errorf("%s is not a directory", d)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	var created []string
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], perm); err != nil {
			return created, err
		}
		created = append(created, missing[i])
	}
	return created, nil
}

// LockDisk opens d.Path and takes a non-blocking flock on it: shared for a
// read-only disk (several sandboxes may read one image), exclusive for a
// read-write one (two writers would corrupt the filesystem). The lock lives
// as long as the open file; release closes it and may be called again.
func LockDisk(d Disk) (release func() error, err error) {
	flag, how, what := os.O_RDWR, unix.LOCK_EX, "exclusive"
	if d.ReadOnly {
		flag, how, what = os.O_RDONLY, unix.LOCK_SH, "shared"
	}
	f, err := os.OpenFile(d.Path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", d.Path, err)
	}
	if err := flockRetry(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("disk %s: in use by another sandbox (%s flock: %w); stop that sandbox or mount the image read-only in both", d.Path, what, err)
		}
		return nil, fmt.Errorf("disk %s: %s flock: %w", d.Path, what, err)
	}
	done := false
	return func() error {
		if done {
			return nil
		}
		done = true
		return f.Close()
	}, nil
}

func flockRetry(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
}

// Prepare stages every file and locks every disk for one sandbox. It refuses
// the same image (same device and inode) twice, since attaching it twice
// would let the guest mount one filesystem twice. On error it undoes all it
// did; on success, release undoes it all (unlocks disks, removes staged files
// and the directories Prepare created) and may be called again.
func Prepare(files []FileStage, disks []Disk) (release func() error, err error) {
	type fileID struct{ dev, ino uint64 }
	seen := map[fileID]int{}
	for i, d := range disks {
		var st unix.Stat_t
		if err := unix.Stat(d.Path, &st); err != nil {
			return nil, fmt.Errorf("disks[%d] %s: %w", i, d.Path, err)
		}
		id := fileID{uint64(st.Dev), st.Ino}
		if j, ok := seen[id]; ok {
			return nil, fmt.Errorf("disks[%d] %s: same image as disks[%d] %s (same device and inode); attach a disk once and bind its mount point instead", i, d.Path, j, disks[j].Path)
		}
		seen[id] = i
	}
	var undo []func() error
	releaseAll := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		undo = nil
		return errors.Join(errs...)
	}
	for i, d := range disks {
		rel, err := LockDisk(d)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("disks[%d]: %w", i, err), releaseAll())
		}
		undo = append(undo, rel)
	}
	for i, f := range files {
		st, err := stageFile(f)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("files[%d]: %w", i, err), releaseAll())
		}
		undo = append(undo, st.undo)
	}
	return releaseAll, nil
}
