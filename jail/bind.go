package jail

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// builder makes host paths visible at the same paths below root.
type builder struct {
	root   string
	userns int    // the fd id-mapped binds map with; 0: none
	bound  []Bind // real host paths, in mount order
}

// bindAll resolves every bind's path (recreating the symlinks met on the
// way), then mounts them parents first.
func (b *builder) bindAll(binds []Bind) error {
	var todo []Bind
	seen := map[string]bool{}
	for _, m := range binds {
		real, err := b.mirror(m.Path)
		if err != nil {
			return fmt.Errorf("%s: %w", m.Path, err)
		}
		if !seen[real] {
			seen[real] = true
			m.Path = real
			todo = append(todo, m)
		}
	}
	sort.SliceStable(todo, func(i, j int) bool { return len(todo[i].Path) < len(todo[j].Path) })
	for _, m := range todo {
		if err := b.bind(m); err != nil {
			return fmt.Errorf("bind %s: %w", m.Path, err)
		}
	}
	return nil
}

// mirror resolves p on the host, component by component as the kernel
// does, and recreates below root each symlink met and each directory on
// the way, so that p resolves to the same file in the jail. It returns p's
// real path.
func (b *builder) mirror(p string) (string, error) {
	todo := strings.Split(p, "/")
	cur := "/"
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", err
		}
		in := filepath.Join(b.root, next)
		if fi.Mode()&fs.ModeSymlink != 0 {
			if hops++; hops > 40 {
				return "", unix.ELOOP
			}
			t, err := os.Readlink(next)
			if err != nil {
				return "", err
			}
			if _, err := os.Lstat(in); err != nil {
				if err := os.Symlink(t, in); err != nil {
					return "", err
				}
			}
			if filepath.IsAbs(t) {
				cur = "/"
			}
			todo = append(strings.Split(t, "/"), todo...)
			continue
		}
		if len(todo) > 0 {
			if err := os.Mkdir(in, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return "", err
			}
		}
		cur = next
	}
	return cur, nil
}

// bind bind-mounts m.Path (a real path) on the same path below root with
// m's restrictions, recursively.
func (b *builder) bind(m Bind) error {
	var under *Bind
	for i := range b.bound {
		if strings.HasPrefix(m.Path, b.bound[i].Path+"/") {
			under = &b.bound[i]
		}
	}
	if under != nil && under.ReadOnly == m.ReadOnly && under.Exec == m.Exec && under.Dev == m.Dev {
		return nil // already there, as it should be
	}
	st, err := os.Stat(m.Path)
	if err != nil {
		return err
	}
	dst := filepath.Join(b.root, m.Path)
	if _, err := os.Lstat(dst); err != nil {
		if under != nil { // never create anything in a host directory
			return fmt.Errorf("%s vanished", m.Path)
		}
		if err := makeMountpoint(dst, st.IsDir()); err != nil {
			return err
		}
	}
	attr := uint64(unix.MOUNT_ATTR_NOSUID)
	if !m.Dev {
		attr |= unix.MOUNT_ATTR_NODEV
	}
	if !m.Exec {
		attr |= unix.MOUNT_ATTR_NOEXEC
	}
	if m.ReadOnly {
		attr |= unix.MOUNT_ATTR_RDONLY
	}
	if !m.IDMap || b.userns == 0 {
		// A bind in the jail's mount namespace, a slave of the host's:
		// mounts the host makes below it later reach qemu (a volume's
		// rslave binds).
		if err := unix.Mount(m.Path, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		if err := unix.MountSetattr(unix.AT_FDCWD, dst, unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: attr}); err != nil {
			return fmt.Errorf("restrict: %w", err)
		}
		b.bound = append(b.bound, m)
		return nil
	}
	// A detached clone, id-mapped and restricted before it is attached:
	// qemu never sees it otherwise.
	clone := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC | unix.AT_RECURSIVE
	if m.Mirrored || m.File != "" {
		clone &^= unix.AT_RECURSIVE
	}
	tree, err := unix.OpenTree(unix.AT_FDCWD, m.Path, uint(clone))
	if err != nil {
		return err
	}
	defer unix.Close(tree)
	idmap := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(b.userns)}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &idmap); err != nil {
		return fmt.Errorf("id-map it for qemu's user namespace (%s must support id-mapped mounts, ADR 022): %w", fsType(m.Path), err)
	}
	restrict := unix.MountAttr{Attr_set: attr}
	if m.Mirrored {
		restrict.Propagation = unix.MS_PRIVATE
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &restrict); err != nil {
		return fmt.Errorf("restrict: %w", err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return err
	}
	if m.File != "" {
		if err := bindAsIs(filepath.Join(m.Path, m.File), filepath.Join(dst, m.File), restrict.Attr_set); err != nil {
			return err
		}
	}
	b.bound = append(b.bound, m)
	return nil
}

// bindAsIs attaches a clone of the mount at src (an id-mapped staged file,
// which cannot be id-mapped again) on dst as it is, with attr set.
func bindAsIs(src, dst string, attr uint64) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	defer unix.Close(tree)
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: attr}); err != nil {
		return fmt.Errorf("%s: restrict: %w", src, err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}

// fsType names p's filesystem for an error.
func fsType(p string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return "its filesystem"
	}
	if n, ok := fsNames[int64(st.Type)]; ok {
		return n
	}
	return fmt.Sprintf("a filesystem of magic %#x", st.Type)
}

var fsNames = map[int64]string{unix.OVERLAYFS_SUPER_MAGIC: "overlayfs", unix.V9FS_MAGIC: "9p", unix.NFS_SUPER_MAGIC: "NFS", unix.FUSE_SUPER_MAGIC: "FUSE"}

func makeMountpoint(p string, dir bool) error {
	if dir {
		return os.Mkdir(p, 0o755)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}
