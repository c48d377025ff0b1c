package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// A jailed qemu runs as root of a user namespace whose ids 0-65535 are the
// host's base..base+65535 (ADR 022), and its shares are id-mapped with it.
// overlayfs cannot be id-mapped, but it can be mounted over id-mapped
// layers: MountShifted mounts a container's rootfs overlay so that its
// files show owner base+k where their layers hold k, which qemu's
// namespace names k again. overlayfs does its own work in the upper layer
// (copy-up, whiteouts) as its mounter, host root: the layers' map sends
// host root to hypervisorID on disk, as a pod member's id-mapped bind does
// for a root qemu (idmap.go), and copy-up then gives each file its owner.
// With kept ids (a container user namespace's, jailmap.go) the layers
// map them to themselves, as qemu's namespace does; lower dirs that
// containerd would id-map itself (its uidmap and gidmap options) are
// id-mapped with those mappings instead, which give them the same host
// ids.

// MountShifted mounts the single overlay ms describes on target, each of
// its layers id-mapped to base (lower dirs, and the upper and work dirs'
// common parent, which must hold both). work is an empty directory for the
// layers' mounts while the overlay is made; they are detached before it
// returns (the overlay keeps them). It refuses what is not one overlay
// with its upper and work dirs side by side.
func MountShifted(ms []mount.Mount, target, work string, base uint32, kept *KeptIDs) (err error) {
	if len(ms) != 1 || ms[0].Type != "overlay" {
		return errors.New("not a single overlay mount")
	}
	var lowers []string
	var upper, wdir string
	var rest []string
	var lowerMap [2]string // containerd's uidmap and gidmap options
	for _, o := range ms[0].Options {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "lowerdir":
			lowers = strings.Split(v, ":")
		case "upperdir":
			upper = v
		case "workdir":
			wdir = v
		case "uidmap":
			lowerMap[0] = v
		case "gidmap":
			lowerMap[1] = v
		default:
			rest = append(rest, o)
		}
	}
	if len(lowers) == 0 || upper != "" && filepath.Dir(upper) != filepath.Dir(wdir) {
		return fmt.Errorf("overlay %v: no lower dirs, or upper and work dirs not side by side", ms[0].Options)
	}
	if (lowerMap[0] == "") != (lowerMap[1] == "") {
		return fmt.Errorf("overlay %v: uidmap without gidmap or the reverse", ms[0].Options)
	}
	return mountShifted(lowers, upper, wdir, rest, target, work, base, kept, lowerMap)
}

// MountShiftedReadOnly mounts an upper-less (read-only) overlay of lowers
// on target, each layer id-mapped to base, as MountShifted does: a
// read-only share on an overlay (OverlayOf).
func MountShiftedReadOnly(lowers []string, target, work string, base uint32) error {
	if len(lowers) == 0 {
		return errors.New("an overlay needs lower dirs")
	}
	return mountShifted(lowers, "", "", nil, target, work, base, nil, [2]string{})
}

// mountShifted mounts the overlay of lowers (and upper and wdir, side by
// side, unless upper is "") with the other options rest on target, its
// layers id-mapped to base and kept (lowers with lowerMap's uid and gid
// mappings instead when set).
func mountShifted(lowers []string, upper, wdir string, rest []string, target, work string, base uint32, kept *KeptIDs, lowerMap [2]string) (err error) {
	if kept == nil {
		kept = &KeptIDs{}
	}
	uids, gids := jailMapList(base, kept.UIDs), jailMapList(base, kept.GIDs)
	ns, err := mount.GetUsernsFD(uids, gids)
	if err != nil {
		return fmt.Errorf("user namespace %s / %s: %w", uids, gids, err)
	}
	defer ns.Close()
	lowerNS := ns
	if lowerMap[0] != "" {
		u, g := withHypervisorList(lowerMap[0]), withHypervisorList(lowerMap[1])
		if lowerNS, err = mount.GetUsernsFD(u, g); err != nil {
			return fmt.Errorf("user namespace %s / %s: %w", u, g, err)
		}
		defer lowerNS.Close()
	}
	var attached []string
	defer func() {
		for _, p := range attached {
			_ = unix.Unmount(p, unix.MNT_DETACH)
			_ = os.Remove(p)
		}
	}()
	attach := func(src, name string, ns *os.File) (string, error) {
		tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return "", fmt.Errorf("layer %s: %w", src, err)
		}
		defer unix.Close(tree)
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(ns.Fd())}
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			return "", fmt.Errorf("layer %s id-mapped: %w", src, err)
		}
		p := filepath.Join(work, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			return "", err
		}
		if err := unix.MoveMount(tree, "", unix.AT_FDCWD, p, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			os.Remove(p)
			return "", fmt.Errorf("layer %s: %w", src, err)
		}
		attached = append(attached, p)
		return p, nil
	}
	var ls []string
	for i, l := range lowers {
		p, err := attach(l, fmt.Sprint("l", i), lowerNS)
		if err != nil {
			return err
		}
		ls = append(ls, p)
	}
	opts := append([]string{"lowerdir=" + strings.Join(ls, ":")}, rest...)
	if upper != "" {
		p, err := attach(filepath.Dir(upper), "u", ns)
		if err != nil {
			return err
		}
		opts = append(opts, "upperdir="+filepath.Join(p, filepath.Base(upper)), "workdir="+filepath.Join(p, filepath.Base(wdir)))
	}
	if err := unix.Mount("overlay", target, "overlay", 0, strings.Join(opts, ",")); err != nil {
		return fmt.Errorf("mount the overlay over id-mapped layers: %w", err)
	}
	return nil
}
