package shim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/log"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/msb-dev/msb/protocol"
)

// OOM events. The guest agent numbers the OOM kills it sees in container
// cgroups (protocol.OOMEvents). The shim fetches them from two places: a
// long poll per VM, for OOM kills that end no process the shim waits for
// (a child of the container's init), and watch, right before it queues a
// TaskExit: the agent records an OOM kill that ended a process before it
// reports that exit, so the TaskOOM goes out first, as with runc's shim.
// Publishing is under one lock and by sequence number, so each OOM is
// published once, whichever path got it first.
//
// The guest is not trusted with containerd's event bus: an event naming a
// container this shim does not run in this VM (another pod's, which
// containerd's CRI would mark OOMKilled) is dropped, and a VM's TaskOOMs
// are rate-limited, so a guest cannot flood the bus.

// oomState is a VM's OOM bookkeeping, shared by the containers of a pod VM.
type oomState struct {
	mu        sync.Mutex
	published uint64      // highest sequence number published
	off       atomic.Bool // the agent does not serve OOMEvents
	// limit bounds the TaskOOMs the VM publishes; refused logs the
	// events dropped (foreign ids, over the limit), itself bounded.
	limit, refused *protocol.Limiter
}

// A real OOM kill is rare (a container's processes are killed one at a
// time, each by a kernel that takes its time under TCG): a few a second
// per VM with a burst for a pod whose members die together is far above
// what a workload makes and far below what floods containerd's bus.
const (
	oomEventsPerSec = 5
	oomEventsBurst  = 20
	// refusedLogsPerSec bounds the log lines about dropped guest data.
	refusedLogsPerSec = 1
	refusedLogsBurst  = 5
)

func newOOMState() *oomState {
	return &oomState{
		limit:   protocol.NewLimiter(oomEventsPerSec, oomEventsBurst),
		refused: protocol.NewLimiter(refusedLogsPerSec, refusedLogsBurst),
	}
}

// oomFlushWait bounds the fetch before an exit is published.
const oomFlushWait = 2 * time.Second

// pollOOM publishes the guest's OOM events until the VM is gone.
func (s *service) pollOOM(c *container) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(s.ctx))
	defer cancel()
	go func() {
		select {
		case <-c.vm.dead:
		case <-s.sd.Done():
		}
		cancel()
	}()
	for {
		c.oom.mu.Lock()
		after := c.oom.published
		c.oom.mu.Unlock()
		evs, err := c.vm.agent.OOMEvents(ctx, after, true)
		if err != nil {
			if ctx.Err() != nil || agentGone(c.vm, err) {
				return
			}
			if status.Code(err) == codes.Unimplemented {
				c.oom.off.Store(true)
				log.G(ctx).WithField("id", c.id).Warn("the guest agent reports no OOM events (older guest image?): no TaskOOM for this container")
				return
			}
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("fetching OOM events from the guest")
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		s.publishOOMs(c, evs)
	}
}

// flushOOMs publishes the OOM events the agent has now; watch calls it
// before it queues a TaskExit.
func (s *service) flushOOMs(ctx context.Context, c *container) {
	if c.oom.off.Load() || c.vm.isDead() {
		return
	}
	c.oom.mu.Lock()
	after := c.oom.published
	c.oom.mu.Unlock()
	fctx, cancel := context.WithTimeout(ctx, oomFlushWait)
	defer cancel()
	evs, err := c.vm.agent.OOMEvents(fctx, after, false)
	if err != nil {
		if !agentGone(c.vm, err) && status.Code(err) != codes.Unimplemented && !errors.Is(err, context.DeadlineExceeded) {
			log.G(ctx).WithError(err).Warn("fetching OOM events before the exit")
		}
		return
	}
	s.publishOOMs(c, evs)
}

// publishOOMs queues a TaskOOM for each event not published yet that
// names a container of c's VM, within the VM's rate limit.
func (s *service) publishOOMs(c *container, evs []protocol.OOMEvent) {
	c.oom.mu.Lock()
	defer c.oom.mu.Unlock()
	for _, ev := range evs {
		if ev.Seq <= c.oom.published {
			continue
		}
		c.oom.published = ev.Seq
		id := ev.ContainerID
		if id == "" {
			id = c.id
		}
		if id != c.id && !s.inVM(c.vm, id) {
			s.refuseOOM(c, id, "names no container of this VM")
			continue
		}
		if ok, _ := c.oom.limit.Allow(); !ok {
			s.refuseOOM(c, id, fmt.Sprintf("over the limit of %d a second", oomEventsPerSec))
			continue
		}
		s.send(&eventstypes.TaskOOM{ContainerID: id})
	}
}

// inVM reports whether id is a container this shim runs in v.
func (s *service) inVM(v *vm, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.containers[id]
	return ok && o.vm == v
}

// refuseOOM logs (rate-limited) an OOM event from the guest that is not
// published.
func (s *service) refuseOOM(c *container, id, why string) {
	if ok, dropped := c.oom.refused.Allow(); ok {
		log.G(s.ctx).WithFields(log.Fields{"vm": c.vm.name, "container": id, "suppressed": dropped}).
			Warnf("OOM event from the guest dropped: it %s", why)
	}
}
