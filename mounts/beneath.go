package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A pod VM's pod dir is shared read-write with the guest, and the host
// bind-mounts each member's shares below it. Guest root can rename, swap
// and symlink anything in that tree between two host steps, so the host
// never walks it by path: every step opens the next component relative to
// the previous one with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), and
// mounts go onto the opened directory with open_tree + move_mount, so no
// symlink the guest plants can steer a host mount or mkdir outside root.

// beneath is how every directory below root is opened: no symlink and no
// mount on the way (a guest that moved one member's bind into another's
// place steers no mkdir into it).
var beneath = unix.OpenHow{
	Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
	Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS,
}

// mountBeneath opens a mount point below root: beneath, but onto the
// mount at its last component.
var mountBeneath = unix.OpenHow{
	Flags:   beneath.Flags,
	Resolve: beneath.Resolve &^ unix.RESOLVE_NO_XDEV,
}

// openParentBeneath opens the directory that holds parts' last component
// below the root fd r (r itself, not a new fd, for a single component).
func openParentBeneath(r int, parts []string) (int, error) {
	if len(parts) == 1 {
		return r, nil
	}
	return unix.Openat2(r, strings.Join(parts[:len(parts)-1], "/"), &beneath)
}

// openRoot opens root itself, which must not be a symlink.
func openRoot(root string) (int, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", root, err)
	}
	return fd, nil
}

// components splits rel, which must stay below its root.
func components(rel string) ([]string, error) {
	rel = filepath.Clean(rel)
	if rel == "." || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("path %q is not below its root", rel)
	}
	return strings.Split(rel, "/"), nil
}

// MkdirBeneath makes the new directory rel below root (its parents must
// exist) and returns it opened (O_PATH), never following a symlink.
func MkdirBeneath(root, rel string) (*os.File, error) { return openBeneath(root, rel, true) }

// openBeneath opens the directory rel below root (O_PATH), following no
// symlink and crossing no mount; with mkdir it makes it first (its parents
// must exist).
func openBeneath(root, rel string, mkdir bool) (*os.File, error) {
	parts, err := components(rel)
	if err != nil {
		return nil, err
	}
	fd, err := openRoot(root)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	parent, err := openParentBeneath(fd, parts)
	if err != nil {
		return nil, fmt.Errorf("open %s below %s: %w", rel, root, err)
	}
	if parent != fd {
		defer unix.Close(parent)
	}
	last := parts[len(parts)-1]
	if mkdir {
		if err := unix.Mkdirat(parent, last, 0o700); err != nil {
			return nil, fmt.Errorf("mkdir %s below %s: %w", rel, root, err)
		}
	}
	dir, err := unix.Openat2(parent, last, &beneath)
	if err != nil {
		return nil, fmt.Errorf("open %s below %s: %w", rel, root, err)
	}
	return os.NewFile(uintptr(dir), filepath.Join(root, rel)), nil
}

// Access says how BindBeneath makes a bind read-only.
type Access int

const (
	// Writable leaves every mount of the bind as the source has it.
	Writable Access = iota
	// ReadOnlyTop makes the bind's top mount read-only and leaves its
	// submounts as they are: runc's "ro" on an rbind.
	ReadOnlyTop
	// ReadOnlyRecursive makes every mount of the bind read-only: "rro".
	ReadOnlyRecursive
)

// BindBeneath bind-mounts source, with its submounts, on the new directory
// rel below root, read-only as access says (mount_setattr, with
// AT_RECURSIVE for ReadOnlyRecursive) and id-mapped when idmap is not
// nil, before the bind becomes visible.
func BindBeneath(root, rel, source string, access Access, idmap *IDMap) error {
	tree, err := cloneTree(source, access, idmap, nil)
	if err != nil {
		return err
	}
	defer unix.Close(tree)
	return attachBeneath(root, rel, tree, source)
}

// cloneTree clones source with its submounts into a detached tree, read-only
// as access says, id-mapped when idmap is not nil, then with always set on
// every mount when not nil.
func cloneTree(source string, access Access, idmap *IDMap, always *unix.MountAttr) (int, error) {
	tree, err := unix.OpenTree(unix.AT_FDCWD, source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return -1, fmt.Errorf("bind %s: %w", source, err)
	}
	set := func(attr *unix.MountAttr, recursive bool) error {
		flags := uint(unix.AT_EMPTY_PATH)
		if recursive {
			flags |= unix.AT_RECURSIVE
		}
		return unix.MountSetattr(tree, "", flags, attr)
	}
	if access != Writable {
		if err := set(&unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}, access == ReadOnlyRecursive); err != nil {
			unix.Close(tree)
			return -1, fmt.Errorf("bind %s read-only: %w", source, err)
		}
	}
	if idmap != nil {
		if err := setIDMap(tree, idmap, source); err != nil {
			unix.Close(tree)
			return -1, err
		}
	}
	if always != nil {
		if err := set(always, true); err != nil {
			unix.Close(tree)
			return -1, fmt.Errorf("bind %s: restrict: %w", source, err)
		}
	}
	return tree, nil
}

// attachBeneath moves the detached tree (a clone of source) onto the new
// directory rel below root, in the caller's mount namespace.
func attachBeneath(root, rel string, tree int, source string) error {
	dir, err := MkdirBeneath(root, rel)
	if err != nil {
		return err
	}
	defer dir.Close()
	return attachTo(dir, tree, source)
}

// attachTo moves the detached tree onto the opened directory dir.
func attachTo(dir *os.File, tree int, source string) error {
	if err := unix.MoveMount(tree, "", int(dir.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, dir.Name(), err)
	}
	return nil
}

// UnmountBeneath detaches the mount (and its submounts) at rel below
// root, reached without following symlinks; nothing mounted there is not
// an error.
func UnmountBeneath(root, rel string) error {
	// The fd's magic link names exactly the mount that was opened.
	return unmountBeneath(root, rel, func(fd int) error {
		return unix.Unmount(fmt.Sprintf("/proc/self/fd/%d", fd), unix.MNT_DETACH)
	})
}

// unmountBeneath opens rel below root as UnmountBeneath says and detaches
// the mount on the opened fd with unmount.
func unmountBeneath(root, rel string, unmount func(fd int) error) error {
	parts, err := components(rel)
	if err != nil {
		return err
	}
	fd, err := openRoot(root)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	parent, err := openParentBeneath(fd, parts)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s below %s: %w", rel, root, err)
	}
	if parent != fd {
		defer unix.Close(parent)
	}
	target, err := unix.Openat2(parent, parts[len(parts)-1], &mountBeneath)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s below %s: %w", rel, root, err)
	}
	defer unix.Close(target)
	if err := unmount(target); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s below %s: %w", rel, root, err)
	}
	return nil
}
