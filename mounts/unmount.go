package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Below a VM's state dir the guest writes (the pod dir, rw shares), so the
// host never finds a mount there by path: mountinfo's list only says which
// mounts to look for; each is reopened relative to the directory with
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), checked to be the root
// of the very mount listed (statx mount ID) and detached through that fd.
// A guest that swapped a directory for a symlink between the listing and
// the unmount steers nothing outside the directory.

// UnmountBelow detaches every mount at or below dir (dir's own mounts
// included, stacked ones too), deepest first, and fails if any is left, so
// that a removal of dir cannot reach into one (a pod VM's state dir holds
// binds of its containers' rootfs and volumes, ADR 007). Detaching is lazy:
// a mount still in use leaves the tree at once and goes when its last user
// does. dir is the host's own path; a dir that does not exist has nothing
// mounted below it, a dir that is a symlink (or no directory) is refused,
// and no symlink below it is followed.
func UnmountBelow(dir string) error {
	return unmountBelow(dir, func() (int, error) { return openRoot(dir) })
}

// UnmountAllBeneath is UnmountBelow of rel below root, where the guest can
// write rel (a pod member's dir): it is reached without following a
// symlink, and a symlink, FIFO, socket or device in its place is refused.
func UnmountAllBeneath(root, rel string) error {
	parts, err := components(rel)
	if err != nil {
		return err
	}
	return unmountBelow(filepath.Join(root, rel), func() (int, error) {
		r, err := openRoot(root)
		if err != nil {
			return -1, err
		}
		defer unix.Close(r)
		fd, err := unix.Openat2(r, strings.Join(parts, "/"), &beneath)
		if err != nil {
			return -1, fmt.Errorf("open %s below %s: %w", rel, root, err)
		}
		return fd, nil
	})
}

// unmountBelow detaches what is mounted at or below the directory open
// returns (opened afresh for each round, so that it lands on the top of a
// stack of mounts on the directory itself); name is for errors.
func unmountBelow(name string, open func() (int, error)) error {
	var left []string
	for round := 0; ; round++ {
		fd, err := open()
		if errors.Is(err, unix.ENOENT) && round == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("refusing %s (a symlink or no directory?): %w", name, err)
		}
		n, l, err := unmountRound(fd)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("unmount below %s: %w", name, err)
		}
		left = l
		if len(left) == 0 || n == 0 {
			break
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("still mounted below %s: %v", name, left)
	}
	return nil
}

// unmountRound detaches, deepest first, each mount listed below the
// directory dir (an fd) that can be reached from it without a symlink;
// it returns how many it detached and the mount points listed.
func unmountRound(dir int) (int, []string, error) {
	// The kernel's name for the directory: where mountinfo names the
	// mounts below it. Only a hint; each is matched by its mount ID.
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(dir))
	if err != nil {
		return 0, nil, err
	}
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != path && !strings.HasPrefix(m.Mountpoint, strings.TrimSuffix(path, "/")+"/"), false
	})
	if err != nil {
		return 0, nil, err
	}
	slices.SortFunc(ms, func(a, b *mountinfo.Info) int { return len(b.Mountpoint) - len(a.Mountpoint) })
	var listed []string
	n := 0
	for _, m := range ms {
		listed = append(listed, m.Mountpoint)
		rel := strings.TrimPrefix(strings.TrimPrefix(m.Mountpoint, path), "/")
		ok, err := unmountID(dir, rel, m.ID)
		if err != nil {
			return n, listed, err
		}
		if ok {
			n++
			if rel == "" {
				// What was below it is the next round's, reopened.
				break
			}
		}
	}
	return n, listed, nil
}

// unmountID detaches the mount with ID id when rel below dir ("" for dir
// itself), reached without a symlink, is its root; it reports whether it
// did.
func unmountID(dir int, rel string, id int) (bool, error) {
	fd := dir
	if rel != "" {
		var err error
		fd, err = unix.Openat2(dir, rel, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			return false, nil // moved or swapped since the listing
		}
		defer unix.Close(fd)
	}
	if !isMountRoot(fd, id) {
		return false, nil
	}
	// The fd's magic link names exactly the mount that was opened.
	if err := unix.Unmount("/proc/self/fd/"+strconv.Itoa(fd), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return false, err
	}
	return true, nil
}

// isMountRoot reports whether fd is the root of the mount with ID id (of
// any mount: id < 0).
func isMountRoot(fd, id int) bool {
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st); err != nil {
		return false
	}
	return st.Mask&unix.STATX_MNT_ID != 0 && (id < 0 || st.Mnt_id == uint64(id)) &&
		st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

// RemoveAllUnmounted removes dir, a host path, after UnmountBelow; with
// mounts left it removes nothing. Below dir it never follows a symlink
// nor enters another mount (RemoveAllBeneath).
func RemoveAllUnmounted(dir string) error {
	dir = filepath.Clean(dir)
	if err := UnmountBelow(dir); err != nil {
		return fmt.Errorf("not removing %s: %w", dir, err)
	}
	parent, err := unix.Open(filepath.Dir(dir), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	defer unix.Close(parent)
	if err := removeAt(parent, filepath.Base(dir)); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// RemoveAllUnmountedBeneath is RemoveAllUnmounted of rel below root, where
// the guest can write rel: a symlink, FIFO, socket or device in rel's
// place, or on the way to it, is refused, and the tree is left as it is.
func RemoveAllUnmountedBeneath(root, rel string) error {
	if err := UnmountAllBeneath(root, rel); err != nil {
		return fmt.Errorf("not removing %s below %s: %w", rel, root, err)
	}
	parts, err := components(rel)
	if err != nil {
		return err
	}
	r, err := openRoot(root)
	if err != nil {
		return err
	}
	defer unix.Close(r)
	parent, err := openParentBeneath(r, parts)
	if err != nil {
		return fmt.Errorf("open %s below %s: %w", rel, root, err)
	}
	if parent != r {
		defer unix.Close(parent)
	}
	if err := removeDirAt(parent, parts[len(parts)-1]); err != nil {
		return fmt.Errorf("remove %s below %s: %w", rel, root, err)
	}
	return nil
}
