package task

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/msb-dev/msb/protocol"
)

// Container cgroups in the guest: Stats and OOM events. The guest runs
// cgroup v2 (the init mounts it with every controller enabled), so runc
// puts each container in one cgroup v2 directory; the agent finds it from
// the init process's /proc/<pid>/cgroup right after runc create.

const cgroupRoot = "/sys/fs/cgroup"

// oomLogSize bounds the OOM events kept for the host to fetch.
const oomLogSize = 256

// oomMaxWait bounds one long poll for OOM events.
const oomMaxWait = 5 * time.Minute

// isCgroup2 reports whether cgroupRoot is the cgroup v2 hierarchy.
func isCgroup2() bool {
	var st unix.Statfs_t
	return unix.Statfs(cgroupRoot, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// cgroupOf returns pid's cgroup v2 path (below cgroupRoot), "" when there
// is none (a cgroup v1 host, as in the agent's own tests).
func cgroupOf(pid int) string {
	if !isCgroup2() {
		return ""
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		log.L.WithError(err).Warnf("cgroup of pid %d", pid)
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok && strings.HasPrefix(p, "/") {
			return p
		}
	}
	return ""
}

// stats is Stats: the container's cgroup v2 metrics, typed
// io.containerd.cgroups.v2.Metrics as containerd's runc shim sends them.
func (s *Service) stats(ctx context.Context, r *task.StatsRequest) (*task.StatsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if c.cgroup == "" {
		return nil, fmt.Errorf("stats of %q: the container's cgroup v2 is unknown (stats need cgroup v2 in the guest): %w", r.ID, errdefs.ErrNotImplemented)
	}
	m, err := cgroup2.Load(c.cgroup)
	if err != nil {
		return nil, fmt.Errorf("stats of %q: cgroup %s: %w", r.ID, c.cgroup, err)
	}
	st, err := m.Stat()
	if err != nil {
		if _, serr := os.Stat(filepath.Join(cgroupRoot, c.cgroup)); serr != nil {
			return nil, fmt.Errorf("stats of %q: cgroup %s is gone: %w", r.ID, c.cgroup, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("stats of %q: %w", r.ID, err)
	}
	b, err := proto.Marshal(st)
	if err != nil {
		return nil, err
	}
	return &task.StatsResponse{Stats: &anypb.Any{TypeUrl: string(proto.MessageName(st)), Value: b}}, nil
}

// oomLog is the agent's record of OOM kills for the host, numbered so
// that the host can fetch what it has not seen yet from several places
// (a long poll, and right before it reports an exit) without loss or
// duplicates.
type oomLog struct {
	mu     sync.Mutex
	seq    uint64
	events []protocol.OOMEvent
	wake   chan struct{} // closed (and replaced) when an event is added
}

func newOOMLog() *oomLog { return &oomLog{wake: make(chan struct{})} }

// noteOOMKills records an OOM event for c when its cgroup's oom_kill
// count went up since last seen.
func (s *Service) noteOOMKills(c *container, kills uint64) {
	l := s.ooms
	l.mu.Lock()
	defer l.mu.Unlock()
	if kills <= c.oomKills {
		return
	}
	c.oomKills = kills
	l.seq++
	l.events = append(l.events, protocol.OOMEvent{Seq: l.seq, ContainerID: c.id})
	if len(l.events) > oomLogSize {
		l.events = l.events[len(l.events)-oomLogSize:]
	}
	close(l.wake)
	l.wake = make(chan struct{})
	log.L.Infof("container %s: OOM kill in its cgroup (%d so far)", c.id, kills)
}

// checkOOM reads the container's memory.events now. A process's exit
// calls it before the exit is reported, so an OOM kill that caused the
// exit is in the log first.
func (s *Service) checkOOM(cid string) {
	c, err := s.getContainer(cid)
	if err != nil || c.cgroup == "" {
		return
	}
	n, err := readOOMKills(filepath.Join(cgroupRoot, c.cgroup, "memory.events"))
	if err != nil {
		return // cgroup deleted already
	}
	s.noteOOMKills(c, n)
}

func readOOMKills(path string) (uint64, error) {
	ev, err := readMemoryEvents(path)
	return ev.oomKill, err
}

// watchOOM follows the container's memory.events (inotify, through the
// cgroup2 manager) until the cgroup is empty or gone.
func (s *Service) watchOOM(c *container) {
	if c.cgroup == "" {
		return
	}
	m, err := cgroup2.Load(c.cgroup)
	if err != nil {
		log.L.WithError(err).Warnf("container %s: cannot watch for OOM kills", c.id)
		return
	}
	evc, errc := m.EventChan()
	go func() {
		for {
			select {
			case ev := <-evc:
				s.noteOOMKills(c, ev.OOMKill)
			case err, ok := <-errc:
				if ok && err != nil {
					log.L.WithError(err).Debugf("container %s: memory events", c.id)
				}
				select {
				case ev := <-evc:
					s.noteOOMKills(c, ev.OOMKill)
				default:
				}
				return
			}
		}
	}()
}

// OOMEvents returns the OOM events after seq after; with wait it blocks
// until there is one (at most oomMaxWait, then none).
func (s *Service) OOMEvents(ctx context.Context, after uint64, wait bool) ([]protocol.OOMEvent, error) {
	timeout := time.NewTimer(oomMaxWait)
	defer timeout.Stop()
	for {
		l := s.ooms
		l.mu.Lock()
		var out []protocol.OOMEvent
		for _, e := range l.events {
			if e.Seq > after {
				out = append(out, e)
			}
		}
		wake := l.wake
		l.mu.Unlock()
		if len(out) > 0 || !wait {
			return out, nil
		}
		select {
		case <-wake:
		case <-timeout.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// killCgroup kills every process in the cgroup v2 path p (cgroup.kill,
// Linux 5.14) and reports whether it could.
func killCgroup(p string) bool {
	if p == "" {
		return false
	}
	return os.WriteFile(filepath.Join("/sys/fs/cgroup", p, "cgroup.kill"), []byte("1"), 0) == nil
}
