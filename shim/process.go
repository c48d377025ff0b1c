package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/shim/manager"
	"github.com/msb-dev/msb/shim/taskio"
	"github.com/msb-dev/msb/specconv"
	"github.com/msb-dev/msb/vmm"
)

// How long exit handling waits for things that should be quick.
const (
	// vmExitWait bounds the wait for a VMM process to exit after its
	// agent's channel broke.
	vmExitWait = 5 * time.Second
	// deadVMOutputWait bounds draining output of a VM that died: its
	// streams are closed with it, so this is only a safety net.
	deadVMOutputWait = time.Second
	// execDrainWait bounds how long an init exit is held back for the
	// container's exec processes to report theirs.
	execDrainWait = 10 * time.Second
)

// container is one task: its rootfs, its VM, its init and exec processes.
type container struct {
	id, bundle string
	namespace  string
	rootfs     string // where the shim mounted the rootfs; "" if it did not
	// jailIDs are the host ids its rootfs is shifted to for its VM's qemu
	// (ADR 022), held until the VM is gone; nil when not shifted.
	jailIDs *jail.IDs
	// rootfsShifted: its rootfs is mounted over id-mapped layers (its
	// VM's, or its pod VM's, ids): bound into a pod VM as it is.
	rootfsShifted bool
	vm            *vm
	rec           *manager.Record
	init          *proc
	oom           *oomState // the VM's: shared by the containers of a pod VM
	// pod is set for a container that joined its pod's VM (ADR 007): it
	// does not own vm.
	pod *podMember
	// spec is the container's OCI spec as containerd gave it: its hooks
	// run on the host (package hooks).
	spec *specs.Spec

	// memLimitBytes is its memory limit as the last update set it (0:
	// as its spec says); guarded by its VM's resizeMu.
	memLimitBytes int64

	mu      sync.Mutex
	execs   map[string]*proc
	running int           // exec processes started whose exit is not yet published
	idle    chan struct{} // signalled when running drops
}

// memLimit is the container's memory limit in bytes (0: none): what its
// last update set, else its spec's. The caller holds vm.resizeMu.
func (c *container) memLimit() int64 {
	if c.memLimitBytes != 0 {
		return max(c.memLimitBytes, 0)
	}
	return specconv.MemoryLimit(c.spec)
}

// setMemLimit records an update's memory limit (≤ 0: none). The caller
// holds vm.resizeMu.
func (c *container) setMemLimit(l int64) {
	if l <= 0 {
		l = -1 // none, not the spec's
	}
	c.memLimitBytes = l
}

// hostPid is the pid containerd sees for every process of the container:
// the VMM process, the host process that is the VM. Guest pids mean
// nothing on the host; Pids lists them.
func (c *container) hostPid() uint32 {
	if a := c.vm.anchor; a != nil {
		return uint32(a.cmd.Process.Pid)
	}
	return uint32(c.vm.h.Pid)
}

func (c *container) getProcess(execID string) (*proc, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok || p == nil { // nil: reserved by an Exec in progress
		return nil, fmt.Errorf("exec %q in container %q: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

func (c *container) execDone() {
	c.mu.Lock()
	c.running--
	c.mu.Unlock()
	select {
	case c.idle <- struct{}{}:
	default:
	}
}

// waitExecs waits until no exec process of c is running (its exit
// published), at most d.
func (c *container) waitExecs(d time.Duration) bool {
	deadline := time.After(d)
	for {
		c.mu.Lock()
		n := c.running
		c.mu.Unlock()
		if n <= 0 {
			return true
		}
		select {
		case <-c.idle:
		case <-deadline:
			return false
		}
	}
}

type procState int

const (
	stateCreated procState = iota
	stateRunning
	stateStopped
)

// proc is a process the shim tracks: init (execID "") or an exec.
type proc struct {
	c      *container
	execID string
	host   taskio.URIs // as containerd gave them
	io     *taskio.IO

	mu         sync.Mutex
	state      procState
	guestPid   uint32
	exitStatus uint32
	exitedAt   time.Time
	killed     bool // SIGKILL was asked for
	starting   bool // init: Start was called (it opens the gate)

	// gate is closed once the process's start event is out (or it will
	// never start), so its exit can never be published before it.
	gate     chan struct{}
	gateOnce sync.Once
	// exited is closed when the exit is known and all output is out: Wait
	// returns then.
	exited chan struct{}
	// published is closed once the TaskExit is queued.
	published chan struct{}
}

func newProc(c *container, execID string, host taskio.URIs, pio *taskio.IO) *proc {
	return &proc{c: c, execID: execID, host: host, io: pio,
		gate: make(chan struct{}), exited: make(chan struct{}), published: make(chan struct{})}
}

func (p *proc) id() string {
	if p.execID == "" {
		return p.c.id
	}
	return p.execID
}

func (p *proc) name() string {
	if p.execID == "" {
		return p.c.id
	}
	return p.c.id + "/" + p.execID
}

func (p *proc) openGate() { p.gateOnce.Do(func() { close(p.gate) }) }

func (p *proc) isExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (p *proc) status() (procState, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.exitStatus, p.exitedAt
}

// watch learns the process's exit from the agent and publishes it: the
// output is drained to the host first, init waits for its execs, and only
// then is the process marked exited (Wait returns) and TaskExit queued.
func (s *service) watch(p *proc) {
	c := p.c
	ctx := log.WithLogger(context.WithoutCancel(s.ctx), log.G(s.ctx).WithField("id", p.name()))
	resp, err := c.vm.task.Wait(ctx, &task.WaitRequest{ID: c.id, ExecID: p.execID})
	// The exit time is the host's, when the guest reported the exit: the
	// guest's clock is its own (it drifts under TCG, a hostile guest sets
	// any), and clients compare the time with their own clock (after
	// Start, containerd's TestContainerExitedAtSet).
	status, at := vmm.ExitGuestLost, time.Now()
	switch {
	case err == nil:
		status = int(resp.ExitStatus)
		p.io.Finish(-1)
	default:
		p.mu.Lock()
		killed := p.killed
		p.mu.Unlock()
		// The agent's channel breaks a moment before the VMM process
		// exits: give it time to, so the cause can be named.
		select {
		case <-c.vm.dead:
		case <-time.After(vmExitWait):
		}
		if c.vm.isDead() {
			status, _ = c.vm.ended(ctx)
			if !c.ownsVM() {
				// A member's VM went under it (its owner exited or was
				// removed): killed, whatever the owner's status (ADR 030).
				status = vmm.ExitKilled
			}
		} else {
			log.G(ctx).WithError(err).Warnf("lost the guest agent: reporting exit status %d", status)
		}
		if killed {
			status = vmm.ExitKilled
		}
		p.io.Finish(deadVMOutputWait)
	}
	p.neverStarted()
	<-p.gate
	if p.execID == "" {
		if !c.waitExecs(execDrainWait) {
			log.G(ctx).Warnf("exec processes still running %s after init exited: reporting init's exit anyway", execDrainWait)
		}
		if c.ownsVM() && !c.isSandbox() {
			// As under runc, the task's pid is gone when its exit is
			// reported (clients probe it with kill(pid, 0)): the VM,
			// whose VMM (or anchor) is that pid, has nothing left to
			// run. A pod's VM stays up for its members.
			p.exitKnown(uint32(status), at)
			c.vm.stop(ctx, int32(status))
			c.vm.anchor.stop()
		}
	}
	p.setExited(uint32(status), at)
	if p.execID == "" {
		c.rec.Exit = &manager.ExitRecord{Pid: c.hostPid(), Status: uint32(status), At: at}
		if err := manager.WriteRecord(c.bundle, c.rec); err != nil {
			log.G(ctx).WithError(err).Warn("record exit status")
		}
	}
	s.flushOOMs(ctx, c) // an OOM kill that caused this exit goes first
	s.send(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          p.id(),
		Pid:         c.hostPid(),
		ExitStatus:  uint32(status),
		ExitedAt:    protobuf.ToTimestamp(at),
	})
	close(p.published)
	if p.execID != "" {
		c.execDone()
	}
}

// killVMUnlessExited kills p's VM if p has not exited within d of a
// SIGKILL the agent accepted: the guest said it killed the process and
// reports no exit, so it is wedged or hostile.
func (p *proc) killVMUnlessExited(d time.Duration) {
	select {
	case <-p.exited:
	case <-p.c.vm.dead:
	case <-time.After(d):
		log.L.WithField("id", p.name()).Warnf("no exit %s after a SIGKILL the guest accepted: killing the VM", d)
		p.c.vm.kill()
	}
}

// neverStarted opens the gate of an init that exited (killed, or its VM
// died) while created, with no Start under way: it never starts, so no
// TaskStart can come, and its exit is published at once, as runc's shim
// does (dockerd kills a task it failed to start and waits for its exit).
func (p *proc) neverStarted() {
	p.mu.Lock()
	never := p.execID == "" && p.state == stateCreated && !p.starting
	p.mu.Unlock()
	if never {
		p.openGate()
	}
}

func (p *proc) setExited(status uint32, at time.Time) {
	p.exitKnown(status, at)
	close(p.exited)
}

// exitKnown makes State report the exit, before Wait returns it: while
// init's VM is stopped, which the guest's State cannot answer.
func (p *proc) exitKnown(status uint32, at time.Time) {
	p.mu.Lock()
	p.state = stateStopped
	p.exitStatus = status
	p.exitedAt = at
	p.mu.Unlock()
}

// failStart marks an exec whose start failed as stopped (status 255, as
// the agent does), without an exit event: runc's shim publishes none.
func (p *proc) failStart() {
	p.openGate()
	p.setExited(vmm.ExitGuestLost, time.Now())
	close(p.published)
	p.io.Abort()
}

// waitPublished waits until the exit of p is queued, at most d.
func (p *proc) waitPublished(ctx context.Context, d time.Duration) error {
	select {
	case <-p.published:
		return nil
	case <-time.After(d):
		return fmt.Errorf("%s: exit not known %s after delete: %w", p.name(), d, context.DeadlineExceeded)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// localState answers State from what the shim knows, for when the agent
// cannot be asked (the VM is gone).
func (p *proc) localState() *task.StateResponse {
	st, code, at := p.status()
	resp := &task.StateResponse{
		ID:       p.id(),
		ExecID:   p.execID,
		Bundle:   p.c.bundle,
		Pid:      p.c.hostPid(),
		Stdin:    p.host.Stdin,
		Stdout:   p.host.Stdout,
		Stderr:   p.host.Stderr,
		Terminal: p.host.Terminal,
	}
	switch st {
	case stateCreated:
		resp.Status = tasktypes.Status_CREATED
	case stateRunning:
		resp.Status = tasktypes.Status_RUNNING
	default:
		resp.Status = tasktypes.Status_STOPPED
		resp.ExitStatus = code
		resp.ExitedAt = timestamppb.New(at)
	}
	if p.c.vm.isDead() && st != stateStopped {
		// The exit is on its way (watch); the process is gone either way.
		resp.Status = tasktypes.Status_STOPPED
		resp.ExitStatus = uint32(vmm.ExitGuestLost)
	}
	return resp
}

// agentGone reports whether err means the guest agent cannot be reached
// (VM dead, connection closed) rather than an answer from it.
func agentGone(v *vm, err error) bool {
	return err != nil && (v.isDead() || errors.Is(err, errClosed))
}

// execProcessSpec is an exec's process spec with process.terminal taken
// from the request, as containerd's runc shim does (spec.Terminal =
// r.Terminal): containerd's client puts cio.WithTerminal in the request's
// flag and leaves the process it copied from the container's spec as it
// was. The agent then sees the two agree.
func execProcessSpec(r *task.ExecProcessRequest) (*anypb.Any, error) {
	if r.Spec == nil {
		return nil, fmt.Errorf("exec %q in %q: the request has no process spec: %w", r.ExecID, r.ID, errdefs.ErrInvalidArgument)
	}
	var ps specs.Process
	if err := json.Unmarshal(r.Spec.Value, &ps); err != nil {
		return nil, fmt.Errorf("exec %q in %q: process spec: %v: %w", r.ExecID, r.ID, err, errdefs.ErrInvalidArgument)
	}
	if ps.Terminal == r.Terminal {
		return r.Spec, nil
	}
	ps.Terminal = r.Terminal
	b, err := json.Marshal(&ps)
	if err != nil {
		return nil, fmt.Errorf("exec %q in %q: process spec: %w", r.ExecID, r.ID, err)
	}
	return &anypb.Any{TypeUrl: r.Spec.TypeUrl, Value: b}, nil
}
