package mounts

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// UnmountBelow detaches every mount at or below dir (dir's own mounts
// included, stacked ones too), deepest first, and fails if any is left, so
// that a RemoveAll of dir cannot reach into one (a pod VM's state dir holds
// binds of its containers' rootfs and volumes, ADR 007). Detaching is lazy:
// a mount still in use leaves the tree at once and goes when its last user
// does. A dir that does not exist has nothing mounted below it; symlinks in
// dir are resolved, as mountinfo names mount points by their real paths.
func UnmountBelow(dir string) error {
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	} else if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	list := func() ([]string, error) {
		ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
		if err != nil {
			return nil, err
		}
		var out []string
		for _, m := range ms {
			out = append(out, m.Mountpoint)
		}
		slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
		return out, nil
	}
	mps, err := list()
	if err != nil {
		return err
	}
	for _, mp := range mps {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			log.L.WithError(err).Warnf("unmount %s", mp)
		}
	}
	if mps, err = list(); err != nil {
		return err
	}
	if len(mps) > 0 {
		return fmt.Errorf("still mounted below %s: %v", dir, mps)
	}
	return nil
}

// RemoveAllUnmounted is os.RemoveAll of dir after UnmountBelow; with
// mounts left it removes nothing.
func RemoveAllUnmounted(dir string) error {
	if err := UnmountBelow(dir); err != nil {
		return fmt.Errorf("not removing %s: %w", dir, err)
	}
	return os.RemoveAll(dir)
}
