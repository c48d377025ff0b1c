package mounts

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A staged single file with an IDMap (a container user namespace's bind,
// which CRI gives /etc/hosts and the like) is an id-mapped bind mount in
// its stage dir, and an id-mapped mount cannot be id-mapped again: a
// recursive id-mapped clone of the stage dir for a jailed qemu's user
// namespace (ADR 022) fails. The dir is bound alone, id-mapped for qemu,
// and the file's mount on it as it is: its mappings give its files the
// container's host ids, which qemu's namespace keeps (JailMap).

// BindStagedIn is BindBeneathIn for the stage dir source holding the
// id-mapped staged file name: source's own mount id-mapped with idmap,
// then a clone of the file's mount, as it is, on the file in the bind.
func BindStagedIn(ns *os.File, root, rel, source, name string, access Access, idmap *IDMap) error {
	tree, err := cloneOne(source, access, idmap)
	if err != nil {
		return err
	}
	defer unix.Close(tree)
	file := filepath.Join(source, name)
	ftree, err := cloneOne(file, access, nil)
	if err != nil {
		return err
	}
	defer unix.Close(ftree)
	d, err := MkdirBeneath(root, rel)
	if err != nil {
		return err
	}
	d.Close()
	attached := false
	err = InMountNS(ns, func() error {
		dir, err := openBeneath(root, rel, false)
		if err != nil {
			return err
		}
		defer dir.Close()
		if err := attachTo(dir, tree, source); err != nil {
			return err
		}
		attached = true
		// tree is now the attached bind's root, the guest's to write: its
		// file is opened from there, following nothing, and must still be
		// a regular file.
		fd, err := unix.Openat2(tree, name, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			return fmt.Errorf("open %s in %s's bind: %w", name, source, err)
		}
		f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), name))
		defer f.Close()
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("%s is no longer the staged regular file (%v)", f.Name(), err)
		}
		return attachTo(f, ftree, file)
	})
	if err != nil && attached {
		return fmt.Errorf("%w (%s)", err, joinErr(UnmountBeneathIn(ns, root, rel)))
	}
	return err
}

// cloneOne clones the mount at source alone into a detached tree,
// restricted as a jail's binds are, read-only unless access is Writable,
// id-mapped with idmap when not nil.
func cloneOne(source string, access Access, idmap *IDMap) (int, error) {
	tree, err := unix.OpenTree(unix.AT_FDCWD, source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("bind %s: %w", source, err)
	}
	if idmap != nil {
		if err := setIDMap(tree, idmap, source); err != nil {
			unix.Close(tree)
			return -1, err
		}
	}
	attr := jailAttrs
	if access != Writable {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(tree)
		return -1, fmt.Errorf("bind %s: restrict: %w", source, err)
	}
	return tree, nil
}

// joinErr names an undo's outcome in an error.
func joinErr(err error) string {
	if err == nil {
		return "undone"
	}
	return "undo: " + err.Error()
}
