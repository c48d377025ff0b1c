package vmmproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containerd/log"

	"github.com/msb-dev/msb/qmp"
	"github.com/msb-dev/msb/vmm"
)

// balloonWait bounds how long a resize down waits for the guest to fill
// the balloon (asking qemu every balloonPoll); what it has not given back
// by then stays in the host cgroup's limit. memoryCallTimeout bounds each
// QMP command of a resize; minMemoryMiB is the least a VM may have
// (vmm.LaunchConfig's).
const (
	balloonPoll       = 100 * time.Millisecond
	memoryCallTimeout = 10 * time.Second
	minMemoryMiB      = 64
)

var balloonWait = 20 * time.Second // a variable for tests

// balloonAtStart sets the balloon of a qemu just started to the VM's size,
// holding the rest of its -m (the headroom) from the guest's first look
// at it: the guest's driver fills the balloon when it loads, so an idle
// guest sees only its size. Nothing to do without headroom, nor for a
// VM started from a template, whose saved state holds the balloon.
func (v *vm) balloonAtStart(ctx context.Context, c *qmp.Client) error {
	if v.cfg.MemoryCeiling() == v.cfg.MemoryMiB || v.cfg.Template != "" {
		return nil
	}
	if err := balloon(ctx, c, v.cfg.MemoryMiB); err != nil {
		return fmt.Errorf("balloon to the VM's %d MiB of its %d: %w", v.cfg.MemoryMiB, v.cfg.MemoryCeiling(), err)
	}
	return nil
}

// balloon sets the balloon's target: the guest is to have mib.
func balloon(ctx context.Context, c *qmp.Client, mib int) error {
	return c.Execute(ctx, "balloon", map[string]any{"value": int64(mib) << 20}, nil)
}

// balloonActual is the memory the guest has now (qemu's view of what it
// gave the balloon), in MiB rounded up.
func balloonActual(ctx context.Context, c *qmp.Client) (int, error) {
	var info struct {
		Actual int64 `json:"actual"`
	}
	if err := c.Execute(ctx, "query-balloon", nil, &info); err != nil {
		return 0, err
	}
	return int((info.Actual + 1<<20 - 1) >> 20), nil
}

// serveMemory answers a creator's vmm.KindMemory stream (relay).
func (v *vm) serveMemory(c net.Conn) {
	if err := vmm.ServeMemory(c, v.setMemory); err != nil {
		log.L.WithError(err).Warn("VM memory request")
	}
}

// memState is the VM's memory as resizes left it; guarded by memMu.
type memState struct {
	// target is the balloon's target (0: the size at start); hostMiB
	// the host cgroup's limit (0: not set since the start), sized for a
	// VM of hostFor MiB (0: the size at start).
	target, hostMiB, hostFor int
}

// setMemory gives the VM req.TargetMiB (ADR 031), one request at a time.
// Up: the host cgroup's limit first, then the balloon lets the guest have
// it. Down (the creator lowered the guest's cgroups first): the balloon
// takes it back, bounded by balloonWait, then the host cgroup's limit
// follows what the guest gave. The balloon is no limit, the host cgroup
// is: a guest that ignores the balloon meets it.
func (v *vm) setMemory(req vmm.MemoryRequest) (vmm.MemoryState, error) {
	v.memMu.Lock()
	defer v.memMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), balloonWait+2*memoryCallTimeout)
	defer cancel()
	cur := v.mem.target
	if cur == 0 {
		cur = v.cfg.MemoryMiB
	}
	ceiling := v.cfg.MemoryCeiling()
	st := vmm.MemoryState{TargetMiB: cur, ActualMiB: cur, MaxMiB: ceiling, HostLimitMiB: v.mem.hostMiB}
	if v.hv == nil {
		// libkrun: no balloon the VMM can set; the VM keeps its size.
		st.MaxMiB = v.cfg.MemoryMiB
		if req.TargetMiB != 0 && req.TargetMiB != cur {
			return st, errors.New("backend libkrun: a running VM keeps its memory (no balloon control); use backend qemu to resize")
		}
		return st, nil
	}
	c, err := v.hv.mon.client(ctx)
	if err != nil {
		return st, err
	}
	qctx, qcancel := context.WithTimeout(ctx, memoryCallTimeout)
	st.ActualMiB, err = balloonActual(qctx, c)
	qcancel()
	if err != nil {
		return st, err
	}
	v.mu.Lock() // a claim may have moved the VM (rehome)
	host := v.host
	v.mu.Unlock()
	t := req.TargetMiB
	if t == 0 || t == cur {
		return st, nil
	}
	if t < minMemoryMiB || t > ceiling {
		return st, fmt.Errorf("%d MiB is outside what this VM can have: %d..%d MiB (it booted with %d MiB, resize_memory_factor times its %d MiB at start, bounded by max_memory_mib)",
			t, minMemoryMiB, ceiling, ceiling, v.cfg.MemoryMiB)
	}
	if t > cur {
		if st.HostLimitMiB, err = host.setMemory(t); err != nil {
			return st, err
		}
		if err := v.setBalloon(ctx, c, t); err != nil {
			// Back to the limit the guest was within.
			prev := v.mem.hostFor
			if prev == 0 {
				prev = v.cfg.MemoryMiB
			}
			if hl, herr := host.setMemory(prev); herr == nil {
				st.HostLimitMiB = hl
			}
			v.mem.hostMiB = st.HostLimitMiB
			return st, err
		}
		v.mem = memState{target: t, hostMiB: st.HostLimitMiB, hostFor: t}
		st.TargetMiB = t
		log.L.Infof("VM memory %d -> %d MiB (host cgroup limit %d MiB)", cur, t, st.HostLimitMiB)
		return st, nil
	}
	if err := v.setBalloon(ctx, c, t); err != nil {
		return st, err
	}
	v.mem.target, st.TargetMiB = t, t
	st.ActualMiB = v.waitBalloon(ctx, c, t, st.ActualMiB)
	// What the guest has not given back stays allowed on the host.
	keep := max(st.ActualMiB, t)
	if st.HostLimitMiB, err = host.setMemory(keep); err != nil {
		return st, err
	}
	v.mem.hostMiB, v.mem.hostFor = st.HostLimitMiB, keep
	log.L.Infof("VM memory %d -> %d MiB (the guest has %d; host cgroup limit %d MiB)", cur, t, st.ActualMiB, st.HostLimitMiB)
	return st, nil
}

func (v *vm) setBalloon(ctx context.Context, c *qmp.Client, mib int) error {
	ctx, cancel := context.WithTimeout(ctx, memoryCallTimeout)
	defer cancel()
	if err := balloon(ctx, c, mib); err != nil {
		return fmt.Errorf("balloon to %d MiB: %w", mib, err)
	}
	return nil
}

// waitBalloon waits, at most balloonWait, until the guest has no more
// than mib, and returns what it has (last: the last answer).
func (v *vm) waitBalloon(ctx context.Context, c *qmp.Client, mib, last int) int {
	deadline := time.Now().Add(balloonWait)
	for time.Now().Before(deadline) {
		qctx, cancel := context.WithTimeout(ctx, memoryCallTimeout)
		n, err := balloonActual(qctx, c)
		cancel()
		if err != nil {
			log.L.WithError(err).Warn("query-balloon")
			return last
		}
		if last = n; n <= mib {
			return n
		}
		time.Sleep(balloonPoll)
	}
	log.L.Warnf("the guest gave back only down to %d MiB of a %d MiB target within %s", last, mib, balloonWait)
	return last
}
