package task

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/mounts/bootenv"
	"github.com/msb-dev/msb/protocol"
)

// Prepare mounts a pod's later container's dir, file and tmpfs mounts
// (ADR 007): dirs and files are bound from the pod share
// (protocol.PodGuestDir/<id>/<tag>), where the host exposed them. A pod
// tmpfs is mounted by the first container that names it and kept for the
// next ones (ADR 032). On error nothing it mounted for the container
// alone is left.
func (s *Service) Prepare(id string, env []string) (retErr error) {
	if id == "" || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return fmt.Errorf("prepare: bad container id %q: %w", id, errdefs.ErrInvalidArgument)
	}
	e, err := bootenv.Parse(env)
	if err != nil {
		return fmt.Errorf("prepare %s: %v: %w", id, err, errdefs.ErrInvalidArgument)
	}
	if len(e.DiskMounts) > 0 || e.HandoffInit != "" {
		return fmt.Errorf("prepare %s: disks and a handoff init are the VM's, set at boot: %w", id, errdefs.ErrInvalidArgument)
	}
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	if s.prepared == nil {
		s.prepared = map[string][]string{}
	}
	if _, ok := s.prepared[id]; ok {
		return fmt.Errorf("prepare %s: already prepared: %w", id, errdefs.ErrAlreadyExists)
	}
	if err := s.mountPodTmpfs(e.PodTmpfs); err != nil {
		return fmt.Errorf("prepare %s: %w", id, err)
	}
	src := filepath.Join(protocol.PodGuestDir, id)
	type op struct {
		path string
		do   func(*[]string) error
	}
	var ops []op
	for _, d := range e.DirMounts {
		ops = append(ops, op{d.GuestPath, func(l *[]string) error {
			return bindInto(l, filepath.Join(src, d.Tag), d.GuestPath, d.ReadOnly)
		}})
	}
	for _, f := range e.FileMounts {
		ops = append(ops, op{f.GuestPath, func(l *[]string) error {
			return bindInto(l, filepath.Join(src, f.Tag), f.GuestPath, f.ReadOnly)
		}})
	}
	for _, t := range e.Tmpfs {
		ops = append(ops, op{t.GuestPath, func(l *[]string) error {
			flags, data, err := TmpfsArgs(t)
			if err != nil {
				return err
			}
			return mountInto(l, "tmpfs", t.GuestPath, "tmpfs", flags, data)
		}})
	}
	slices.SortStableFunc(ops, func(x, y op) int {
		return strings.Count(x.path, "/") - strings.Count(y.path, "/")
	})
	var done []string
	defer func() {
		if retErr != nil {
			unmountAll(done)
		}
	}()
	for _, o := range ops {
		if err := o.do(&done); err != nil {
			return fmt.Errorf("prepare %s: %w", id, err)
		}
	}
	s.prepared[id] = done
	log.L.Infof("prepared %s: %d dir, %d file, %d tmpfs, %d pod tmpfs mounts", id, len(e.DirMounts), len(e.FileMounts), len(e.Tmpfs), len(e.PodTmpfs))
	return nil
}

// mountPodTmpfs mounts each of ts not mounted yet; with s.prepMu held.
// Each stays until the VM ends, whatever becomes of the container.
func (s *Service) mountPodTmpfs(ts []bootenv.Tmpfs) error {
	for _, t := range ts {
		if s.podTmpfs[t.GuestPath] {
			continue
		}
		flags, data, err := TmpfsArgs(t)
		if err != nil {
			return err
		}
		var l []string
		if err := mountInto(&l, "tmpfs", t.GuestPath, "tmpfs", flags, data); err != nil {
			return fmt.Errorf("pod tmpfs: %w", err)
		}
		if s.podTmpfs == nil {
			s.podTmpfs = map[string]bool{}
		}
		s.podTmpfs[t.GuestPath] = true
	}
	return nil
}

// unprepare removes what Prepare mounted for id, if anything.
func (s *Service) unprepare(id string) {
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	if l, ok := s.prepared[id]; ok {
		unmountAll(l)
		delete(s.prepared, id)
	}
}

// unprepareAll removes what Prepare mounted for every container.
func (s *Service) unprepareAll() {
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	for id, l := range s.prepared {
		unmountAll(l)
		delete(s.prepared, id)
	}
}

func unmountAll(l []string) {
	for i := len(l) - 1; i >= 0; i-- {
		if err := unix.Unmount(l[i], unix.MNT_DETACH); err != nil {
			log.L.WithError(err).Warnf("unmount %s", l[i])
		}
	}
}

func mountInto(l *[]string, source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", target, err)
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s with %q: %w", source, fstype, target, data, err)
	}
	*l = append(*l, target)
	return nil
}

func bindInto(l *[]string, source, target string, ro bool) error {
	if _, err := os.Stat(source); err != nil {
		return fmt.Errorf("pod share: %w", err)
	}
	if err := mountInto(l, source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	if ro {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", target, err)
		}
	}
	return nil
}

var tmpfsFlags = map[string]uintptr{
	"ro": unix.MS_RDONLY, "noexec": unix.MS_NOEXEC, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV,
}

// TmpfsArgs returns the mount(2) flags and data of t (a tmpfs of the boot
// env: Boot's and Prepare's).
func TmpfsArgs(t bootenv.Tmpfs) (uintptr, string, error) {
	var flags uintptr
	var data []string
	if t.SizeBytes > 0 {
		data = append(data, "size="+strconv.FormatInt(t.SizeBytes, 10))
	}
	if t.Mode != 0 {
		data = append(data, "mode="+strconv.FormatUint(uint64(t.Mode), 8))
	}
	for _, o := range t.Options {
		f, ok := tmpfsFlags[o]
		if !ok {
			return 0, "", fmt.Errorf("boot: tmpfs %s: unknown option %q", t.GuestPath, o)
		}
		flags |= f
	}
	return flags, strings.Join(data, ","), nil
}
