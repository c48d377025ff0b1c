package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/agent/modprobe"
	"github.com/msb-dev/msb/agent/task"
	"github.com/msb-dev/msb/mounts/bootenv"
	"github.com/msb-dev/msb/protocol"
)

// agentService implements protocol.Agent and its optional parts; the
// container-bound ones (OOM events, Prepare, Network) go to the task
// service.
type agentService struct{ a *Agent }

var (
	_ protocol.OOMWatcher     = (*agentService)(nil)
	_ protocol.Preparer       = (*agentService)(nil)
	_ protocol.Networker      = (*agentService)(nil)
	_ protocol.NetworkRemover = (*agentService)(nil)
)

func (s *agentService) Boot(ctx context.Context, env []string) error {
	return task.ToStatus(s.a.Boot(env))
}

func (s *agentService) Status(ctx context.Context) (string, error) {
	return s.a.Status(), nil
}

func (s *agentService) Shutdown(ctx context.Context, code int32) error {
	return task.ToStatus(s.a.Shutdown(code))
}

// OOMEvents implements protocol.OOMWatcher.
func (s *agentService) OOMEvents(ctx context.Context, after uint64, wait bool) ([]protocol.OOMEvent, error) {
	evs, err := s.a.tasks.OOMEvents(ctx, after, wait)
	return evs, task.ToStatus(err)
}

// Prepare implements protocol.Preparer.
func (s *agentService) Prepare(ctx context.Context, id string, env []string) error {
	return task.ToStatus(s.a.tasks.Prepare(id, env))
}

// Network implements protocol.Networker.
func (s *agentService) Network(ctx context.Context, id string, nics []protocol.NetInterface) error {
	return task.ToStatus(s.a.tasks.Network(id, nics))
}

// NetworkRemove implements protocol.NetworkRemover.
func (s *agentService) NetworkRemove(ctx context.Context, id string, nics []protocol.NetInterface) error {
	return task.ToStatus(s.a.tasks.NetworkRemove(id, nics))
}

func (s *agentService) WaitShutdown(ctx context.Context) (int32, error) {
	select {
	case <-s.a.shutdownCh:
		return s.a.shutdownCode, nil
	case <-ctx.Done():
		return 0, task.ToStatus(ctx.Err())
	}
}

// Status is "booted <kernel release>" once Boot succeeded, else
// "waiting for boot".
func (a *Agent) Status() string {
	a.bootMu.Lock()
	defer a.bootMu.Unlock()
	if !a.booted {
		return "waiting for boot"
	}
	return "booted " + modprobe.KernelRelease()
}

// Boot applies the MSB_* boot env: mounts, hostname, rlimits, and the
// handoff of PID 1 to a user init. It runs once.
func (a *Agent) Boot(env []string) error {
	e, err := bootenv.Parse(env)
	if err != nil {
		return fmt.Errorf("boot env: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	a.bootMu.Lock()
	defer a.bootMu.Unlock()
	if a.booted {
		return fmt.Errorf("boot: already booted: %w", errdefs.ErrFailedPrecondition)
	}
	if len(e.PodTmpfs) > 0 {
		return fmt.Errorf("boot: a pod tmpfs is a joining container's (Prepare), not the VM's: %w", errdefs.ErrInvalidArgument)
	}
	if e.HandoffInit != "" && a.opts.Handoff == nil {
		return fmt.Errorf("boot: MSB_HANDOFF_INIT needs the agent to run under the msb init (guest PID 1): %w", errdefs.ErrNotImplemented)
	}
	// Parents before children, whatever their kind: a share may sit inside
	// a disk's mount point.
	type op struct {
		path string
		do   func() error
	}
	var ops []op
	for i, d := range e.DiskMounts {
		ops = append(ops, op{d.GuestPath, func() error { return a.mountDisk(d, i) }})
	}
	for _, d := range e.DirMounts {
		ops = append(ops, op{d.GuestPath, func() error { return a.mountShare(d.Tag, d.GuestPath, d.ReadOnly) }})
	}
	for _, f := range e.FileMounts {
		ops = append(ops, op{f.GuestPath, func() error {
			if err := a.mountShare(f.Tag, f.GuestPath, f.ReadOnly); err != nil {
				return err
			}
			if _, err := os.Lstat(filepath.Join(f.GuestPath, f.Name)); err != nil {
				log.L.WithError(err).Warnf("file mount %s: %s is not in the share", f.Tag, f.Name)
			}
			return nil
		}})
	}
	for _, t := range e.Tmpfs {
		ops = append(ops, op{t.GuestPath, func() error { return a.mountTmpfs(t) }})
	}
	slices.SortStableFunc(ops, func(x, y op) int {
		return strings.Count(x.path, "/") - strings.Count(y.path, "/")
	})
	for _, o := range ops {
		if err := o.do(); err != nil {
			return err
		}
	}
	if e.Hostname != "" {
		if err := unix.Sethostname([]byte(e.Hostname)); err != nil {
			return fmt.Errorf("boot: sethostname %q: %w", e.Hostname, err)
		}
	}
	for _, r := range e.Rlimits {
		// syscall.Setrlimit (not unix.) so Go stops restoring its saved
		// RLIMIT_NOFILE in the children it starts.
		if err := syscall.Setrlimit(r.Resource, &syscall.Rlimit{Cur: r.Soft, Max: r.Hard}); err != nil {
			return fmt.Errorf("boot: setrlimit %d to %d:%d: %w", r.Resource, r.Soft, r.Hard, err)
		}
	}
	if e.HandoffInit != "" {
		req, err := handoffRequest(e)
		if err != nil {
			return err
		}
		if err := a.opts.Handoff(req); err != nil {
			return fmt.Errorf("boot: hand PID 1 to %s: %w", e.HandoffInit, err)
		}
		log.L.Infof("PID 1 handed to %s (root %s)", req.Init, req.Root)
	}
	a.booted = true
	a.detached.Store(false) // a restored template's host booted it
	log.L.Infof("booted: %d disk, %d dir, %d file, %d tmpfs mounts", len(e.DiskMounts), len(e.DirMounts), len(e.FileMounts), len(e.Tmpfs))
	return nil
}

func (a *Agent) mount(source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("boot: mkdir %s: %w", target, err)
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("boot: mount %s (%s) on %s with %q: %w", source, fstype, target, data, err)
	}
	a.mounted = append(a.mounted, target)
	return nil
}

// Options of 9p shares (QEMU) and of virtio-fs shares (libkrun).
const ninePOptions = "trans=virtio,version=9p2000.L,msize=512000,cache=mmap"

func (a *Agent) mountShare(tag, path string, ro bool) error {
	var flags uintptr
	if ro {
		flags |= unix.MS_RDONLY
	}
	if a.opts.Channel == ChannelVsock {
		return a.mount(tag, path, "virtiofs", flags, "")
	}
	return a.mount(tag, path, "9p", flags, ninePOptions)
}

func (a *Agent) mountTmpfs(t bootenv.Tmpfs) error {
	flags, data, err := task.TmpfsArgs(t)
	if err != nil {
		return err
	}
	return a.mount("tmpfs", t.GuestPath, "tmpfs", flags, data)
}

// diskFlags are mount options that are flags, not filesystem data.
var diskFlags = map[string]struct {
	set   bool
	flags uintptr
}{
	"rw": {false, unix.MS_RDONLY}, "suid": {false, unix.MS_NOSUID}, "dev": {false, unix.MS_NODEV}, "exec": {false, unix.MS_NOEXEC},
	"nosuid": {true, unix.MS_NOSUID}, "nodev": {true, unix.MS_NODEV}, "noexec": {true, unix.MS_NOEXEC},
	"sync": {true, unix.MS_SYNCHRONOUS}, "dirsync": {true, unix.MS_DIRSYNC}, "noatime": {true, unix.MS_NOATIME},
	"nodiratime": {true, unix.MS_NODIRATIME}, "relatime": {true, unix.MS_RELATIME}, "strictatime": {true, unix.MS_STRICTATIME},
	"lazytime": {true, unix.MS_LAZYTIME}, "atime": {false, unix.MS_NOATIME}, "async": {false, unix.MS_SYNCHRONOUS},
}

func (a *Agent) mountDisk(d bootenv.DiskMount, index int) error {
	// libkrun derives a disk's serial from the image file, not from the
	// tag; its disks appear in the order they were added (vda first).
	byOrder := ""
	if a.opts.Channel == ChannelVsock && index < 26 {
		byOrder = "/dev/vd" + string(rune('a'+index))
	}
	dev, err := findDisk(d.Tag, byOrder, 5*time.Second)
	if err != nil {
		return err
	}
	var flags uintptr
	var data []string
	for _, o := range d.Options {
		if f, ok := diskFlags[o]; ok {
			if f.set {
				flags |= f.flags
			} else {
				flags &^= f.flags
			}
			continue
		}
		data = append(data, o)
	}
	if d.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	fstypes := []string{d.FSType}
	if d.FSType == "" {
		fstypes = blockFilesystems()
	}
	var errs []error
	for _, fs := range fstypes {
		err := a.mount(dev, d.GuestPath, fs, flags, strings.Join(data, ","))
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("boot: disk %s (%s): no block filesystem in /proc/filesystems to try", d.Tag, dev)
	}
	return fmt.Errorf("boot: disk %s (%s): %w", d.Tag, dev, errors.Join(errs...))
}

// findDisk returns /dev/vdX of the virtio-blk disk whose serial is serial,
// else byOrder when it is set and exists.
func findDisk(serial, byOrder string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		paths, _ := filepath.Glob("/sys/block/vd*/serial")
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			if strings.TrimRight(string(b), "\x00 \n") == serial {
				return "/dev/" + filepath.Base(filepath.Dir(p)), nil
			}
		}
		if byOrder != "" {
			if _, err := os.Stat(byOrder); err == nil {
				return byOrder, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("boot: no virtio-blk disk with serial %q (looked at %d disks)", serial, len(paths))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// blockFilesystems lists the filesystems of /proc/filesystems that need a
// device, most common first.
func blockFilesystems() []string {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "nodev") {
			continue
		}
		if fs := strings.TrimSpace(line); fs != "" {
			out = append(out, fs)
		}
	}
	pref := []string{"ext4", "xfs", "btrfs", "ext3", "ext2", "squashfs", "erofs"}
	slices.SortStableFunc(out, func(x, y string) int {
		ix, iy := slices.Index(pref, x), slices.Index(pref, y)
		if ix < 0 {
			ix = len(pref)
		}
		if iy < 0 {
			iy = len(pref)
		}
		return ix - iy
	})
	return out
}

// Shutdown kills all containers, syncs, unmounts the boot mounts, releases
// WaitShutdown callers with code and, with Options.Guest, powers the
// machine off shortly after (so the WaitShutdown reply gets out).
func (a *Agent) Shutdown(code int32) error {
	first := false
	a.shutdownOnce.Do(func() {
		first = true
		log.L.Infof("shutdown requested (exit code %d)", code)
		a.tasks.Shutdown(a.opts.Guest)
		a.bootMu.Lock()
		for i := len(a.mounted) - 1; i >= 0; i-- {
			if err := unix.Unmount(a.mounted[i], unix.MNT_DETACH); err != nil {
				log.L.WithError(err).Warnf("unmount %s", a.mounted[i])
			}
		}
		a.mounted = nil
		a.bootMu.Unlock()
		a.shutdownCode = code
		close(a.shutdownCh)
	})
	if first && a.opts.Guest {
		go func() {
			time.Sleep(200 * time.Millisecond)
			unix.Sync()
			log.L.Info("powering off")
			if err := unix.Reboot(rebootCmd(a.opts.Channel)); err != nil {
				log.L.WithError(err).Error("power off")
			}
		}()
	}
	return nil
}
