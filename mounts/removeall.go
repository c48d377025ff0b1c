package mounts

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// The host removes trees the guest writes (a pod member's dir, a VM's
// state dir with its pod dir and staged files). os.RemoveAll neither
// stops at a mount nor bounds its work, so removal here is unlinkat
// relative to directory fds opened with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV): a symlink, FIFO, socket or
// device node is unlinked, never opened or followed, and a mount point
// stops the removal with an error instead of emptying what is mounted.

const (
	// maxDepth bounds the fds one removal holds: a subtree deeper than
	// that is moved up into the top directory and removed from there.
	maxDepth = 64
	// maxPasses bounds the passes over a tree that keeps changing (a
	// guest still writing it) or holds moved-up subtrees.
	maxPasses = 4096
)

// dirHow opens a directory to empty: no symlink, no other mount.
var dirHow = unix.OpenHow{
	Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
	Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS,
}

// removeAt removes name in the directory parent (an fd), whatever it is:
// a file or symlink is unlinked, a directory removed with all below it.
func removeAt(parent int, name string) error {
	err := unix.Unlinkat(parent, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		return fmt.Errorf("unlink %s: %w", name, err)
	}
	return removeDirAt(parent, name)
}

// removeDirAt removes the directory name in parent and all below it; a
// mount point at or below it, or name being no directory, is an error.
func removeDirAt(parent int, name string) error {
	for pass := 0; ; pass++ {
		fd, err := unix.Openat2(parent, name, &dirHow)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return openDirError(name, err)
		}
		r := remover{top: fd}
		err = r.empty(fd, 1)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		err = unix.Unlinkat(parent, name, unix.AT_REMOVEDIR)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.ENOTEMPTY) || pass >= maxPasses {
			return fmt.Errorf("rmdir %s: %w", name, err)
		}
	}
}

func openDirError(name string, err error) error {
	switch {
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%s is a mount point: not removing what is mounted there: %w", name, err)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%s is no longer a directory (swapped for a symlink or special file?): %w", name, err)
	}
	return fmt.Errorf("open %s: %w", name, err)
}

// remover empties one directory tree, top.
type remover struct {
	top   int
	moved int
}

// empty removes what is in dir, at depth below top.
func (r *remover) empty(dir, depth int) error {
	d, err := unix.Dup(dir)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(d), "")
	defer f.Close()
	for {
		names, err := f.Readdirnames(256)
		for _, name := range names {
			if err := r.remove(dir, name, depth); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// remove removes name in dir; a directory at maxDepth is moved up into top.
func (r *remover) remove(dir int, name string, depth int) error {
	err := unix.Unlinkat(dir, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		return fmt.Errorf("unlink %s: %w", name, err)
	}
	if depth >= maxDepth {
		for {
			r.moved++
			err := unix.Renameat2(dir, name, r.top, fmt.Sprintf(".msb-rm-%d", r.moved), unix.RENAME_NOREPLACE)
			if !errors.Is(err, unix.EEXIST) {
				return err
			}
		}
	}
	sub, err := unix.Openat2(dir, name, &dirHow)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		// Swapped since the unlink: the next pass takes it as it is then.
		return nil
	}
	if err != nil {
		return openDirError(name, err)
	}
	err = r.empty(sub, depth+1)
	unix.Close(sub)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := unix.Unlinkat(dir, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTEMPTY) {
		return fmt.Errorf("rmdir %s: %w", name, err)
	}
	return nil
}
