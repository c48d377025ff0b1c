package shim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/msb-dev/msb/hooks"
	"github.com/msb-dev/msb/vmm"
)

var errClosed = ttrpc.ErrClosed

// deleteExitWait bounds how long Delete waits for the init exit to be
// published after the guest deleted the container.
const deleteExitWait = 5 * time.Second

// guestStateTimeout bounds the guest's answer to State, a lookup in the
// agent (milliseconds; seconds on a stalled TCG guest): past it the shim
// answers from what it knows. The caller's own deadline bounds it too:
// containerd gives State 2 s (io.containerd.timeout.task.state), and a
// State that misses it fails containerd's Get, so `ctr task kill` and
// `task delete` could not even find a task whose guest stopped answering.
const guestStateTimeout = 10 * time.Second

// killExitWait bounds how long the exit of an init the agent accepted a
// SIGKILL for may take (execDrainWait included) before the VM is killed:
// a guest that acknowledges the kill and never reports the exit must not
// keep `ctr task delete --force` (which waits for that exit) forever.
const killExitWait = 30 * time.Second

// guestDeleteTimeout bounds the guest's delete of a container (runc
// delete in the guest, seconds under TCG): a guest that never answers
// must not keep a container from being deleted.
const guestDeleteTimeout = time.Minute

// service is the task service (task API v3) of one shim: it serves every
// container of its group, each in its own VM.
type service struct {
	ctx       context.Context
	namespace string
	publisher cshim.Publisher
	sd        shutdown.Service
	events    chan any
	// stopEvents is closed when the shim starts shutting down; forward
	// then publishes what is queued and closes forwarded.
	stopEvents, forwarded chan struct{}

	mu         sync.Mutex
	containers map[string]*container
	creating   map[string]bool
	// shutdownAsked: containerd called Shutdown (shutdownIfAsked).
	shutdownAsked bool
}

var _ task.TTRPCTaskService = (*service)(nil)

// newService makes the task service; events go out in order through
// publisher until the shim shuts down.
func newService(ctx context.Context, publisher cshim.Publisher, sd shutdown.Service) (*service, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	s := &service{
		ctx:        ctx,
		namespace:  ns,
		publisher:  publisher,
		sd:         sd,
		events:     make(chan any, 128),
		stopEvents: make(chan struct{}),
		forwarded:  make(chan struct{}),
		containers: map[string]*container{},
		creating:   map[string]bool{},
	}
	go s.forward()
	// The shim process exits once the shutdown callbacks return: this one
	// holds it until every queued event (the last container's
	// /tasks/delete above all) is published, or gives up with an error.
	sd.RegisterCallback(func(ctx context.Context) error {
		close(s.stopEvents)
		select {
		case <-s.forwarded:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("events not all published at shutdown: %w", ctx.Err())
		case <-time.After(eventsDrainTimeout):
			return fmt.Errorf("events not all published within %s of shutdown", eventsDrainTimeout)
		}
	})
	if address, err := cshim.ReadAddress("address"); err == nil {
		sd.RegisterCallback(func(context.Context) error { return cshim.RemoveSocket(address) })
	}
	return s, nil
}

// RegisterTTRPC registers the task service on the shim's server.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	task.RegisterTTRPCTaskService(server, s)
	return nil
}

// send queues an event; one goroutine publishes them in queue order.
func (s *service) send(e any) {
	select {
	case s.events <- e:
	case <-s.stopEvents:
		log.G(s.ctx).Errorf("event %s after shutdown: dropped", runtime.GetTopic(e))
	}
}

// eventsDrainTimeout bounds how long shutdown waits for queued events.
const eventsDrainTimeout = 10 * time.Second

func (s *service) forward() {
	ctx := context.WithoutCancel(s.ctx)
	defer close(s.forwarded)
	defer s.publisher.Close()
	publish := func(e any) {
		if err := s.publisher.Publish(ctx, runtime.GetTopic(e), e); err != nil {
			log.G(ctx).WithError(err).Errorf("post event %s", runtime.GetTopic(e))
		}
	}
	for {
		select {
		case e := <-s.events:
			publish(e)
		case <-s.stopEvents:
			for {
				select {
				case e := <-s.events:
					publish(e)
				default:
					return
				}
			}
		}
	}
}

func (s *service) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "container %q not created", id)
	}
	return c, nil
}

func (s *service) getProcess(id, execID string) (*container, *proc, error) {
	c, err := s.get(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.getProcess(execID)
	if err != nil {
		return nil, nil, errgrpc.ToGRPC(err)
	}
	return c, p, nil
}

// fromAgent turns an error from the guest agent into a containerd error
// (errdefs kinds survive the hop through ttrpc status codes).
func fromAgent(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToNative(err)
}

// Create a container in a new VM.
func (s *service) Create(ctx context.Context, r *task.CreateTaskRequest) (*task.CreateTaskResponse, error) {
	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok || s.creating[r.ID] {
		s.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "container %q", r.ID)
	}
	s.creating[r.ID] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.creating, r.ID)
		if _, ok := s.containers[r.ID]; ok {
			s.shutdownAsked = false // containerd asks again when it is done
		}
		s.shutdownIfAsked()
		s.mu.Unlock()
	}()

	c, err := s.create(ctx, r)
	if err != nil {
		log.G(ctx).WithError(err).Errorf("create %s", r.ID)
		return nil, errgrpc.ToGRPC(err)
	}
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	s.send(taskCreateEvent(c, r))
	go s.watch(c.init)
	if c.ownsVM() {
		go s.pollOOM(c) // one poller per VM
	}
	return &task.CreateTaskResponse{Pid: c.hostPid()}, nil
}

// Start the init process or an exec.
func (s *service) Start(ctx context.Context, r *task.StartRequest) (*task.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID == "" {
		p.mu.Lock()
		p.starting = true // watch now leaves the gate to us
		p.mu.Unlock()
		defer p.openGate()
		if c.ownsVM() {
			if err := c.vm.net.Attach(ctx, c.vm.agent, c.id); err != nil {
				return nil, errgrpc.ToGRPC(fmt.Errorf("VM %s: %w", c.vm.name, err))
			}
			if c.isSandbox() {
				// For CRI's port-forward; without it the pod still runs.
				if err := c.vm.net.ForwardLoopback(c.vm.launch.AgentSocket, c.id); err != nil {
					log.G(ctx).WithError(err).Warnf("VM %s: port-forward into the pod will not work", c.vm.name)
				}
			}
		}
		resp, err := c.vm.task.Start(ctx, &task.StartRequest{ID: r.ID})
		if err != nil {
			return nil, errgrpc.ToGRPC(fromAgent(err))
		}
		p.mu.Lock()
		p.guestPid, p.state = resp.Pid, stateRunning
		p.mu.Unlock()
		if c.ownsVM() {
			// Networks connected from now on (docker network connect).
			if err := c.vm.net.Watch(ctx, c.vm.agent, c.id); err != nil {
				log.G(ctx).WithError(err).Errorf("VM %s: networks connected after start will not reach the guest", c.vm.name)
			}
		}
		s.send(&eventstypes.TaskStart{ContainerID: c.id, Pid: c.hostPid()})
		c.runHooks(ctx, hooks.Poststart, specs.StateRunning)
		return &task.StartResponse{Pid: c.hostPid()}, nil
	}

	c.mu.Lock()
	if c.init.isExited() {
		c.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s init process is not running", c.id)
	}
	c.running++
	c.mu.Unlock()
	if err := p.io.Attach(ctx, r.ID, c.namespace); err != nil {
		p.failStart()
		c.execDone()
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %q stdio: %w", r.ExecID, err))
	}
	resp, err := c.vm.task.Start(ctx, &task.StartRequest{ID: r.ID, ExecID: r.ExecID})
	if err != nil {
		p.failStart()
		c.execDone()
		return nil, errgrpc.ToGRPC(fromAgent(err))
	}
	p.mu.Lock()
	p.guestPid, p.state = resp.Pid, stateRunning
	p.mu.Unlock()
	s.send(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: r.ExecID, Pid: c.hostPid()})
	p.openGate()
	go s.watch(p)
	return &task.StartResponse{Pid: c.hostPid()}, nil
}

// Delete the container (VM and all) or an exec.
func (s *service) Delete(ctx context.Context, r *task.DeleteRequest) (*task.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		if !c.vm.isDead() {
			dctx, cancel := context.WithTimeout(ctx, guestDeleteTimeout)
			_, err := c.vm.task.Delete(dctx, &task.DeleteRequest{ID: r.ID, ExecID: r.ExecID})
			cancel()
			if err != nil && !agentGone(c.vm, err) {
				return nil, errgrpc.ToGRPC(fromAgent(err))
			}
		}
		c.mu.Lock()
		delete(c.execs, r.ExecID)
		c.mu.Unlock()
		p.openGate() // created, never started: no exit will come
		p.io.Abort()
		_, code, at := p.status()
		return &task.DeleteResponse{Pid: c.hostPid(), ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}

	// A container that owns its VM and has exited is not deleted in the
	// guest: the VM's power-off below stops it (runc's state goes with
	// the VM), and a runc delete costs a process start under TCG.
	if !c.vm.isDead() && !(c.ownsVM() && p.isExited()) {
		dctx, cancel := context.WithTimeout(ctx, guestDeleteTimeout)
		_, err := c.vm.task.Delete(dctx, &task.DeleteRequest{ID: r.ID})
		cancel()
		switch {
		case err == nil || agentGone(c.vm, err) || errdefs.IsNotFound(fromAgent(err)):
		case c.ownsVM() && errors.Is(err, context.DeadlineExceeded):
			// The VM's power-off below ends the container as well.
			log.G(ctx).WithError(err).Warnf("delete: the guest did not answer within %s: stopping the VM", guestDeleteTimeout)
		default:
			return nil, errgrpc.ToGRPC(fromAgent(err))
		}
	}
	p.openGate()
	if err := p.waitPublished(ctx, deleteExitWait); err != nil {
		// The guest deleted the container, yet its exit is not out: the
		// output copy is stuck on a client that stopped reading, or the
		// guest is. Closing the host side and stopping the VM ends both.
		log.G(ctx).WithError(err).Warn("delete: closing stdio and stopping the VM")
		p.io.Abort()
		if c.ownsVM() {
			c.vm.stop(ctx, int32(vmm.ExitGuestLost))
		}
		if err := p.waitPublished(ctx, 5*time.Second); err != nil {
			log.G(ctx).WithError(err).Error("delete: init exit never published")
		}
	}
	s.mu.Lock()
	delete(s.containers, r.ID)
	s.mu.Unlock()
	_, code, at := p.status()
	if c.ownsVM() {
		c.vm.stop(ctx, int32(code))
	}
	s.teardown(ctx, c)
	c.runHooks(ctx, hooks.Poststop, specs.StateStopped)
	s.send(&eventstypes.TaskDelete{
		ContainerID: c.id,
		Pid:         c.hostPid(),
		ExitStatus:  code,
		ExitedAt:    protobuf.ToTimestamp(at),
	})
	return &task.DeleteResponse{Pid: c.hostPid(), ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// State of a process: the agent's view, with the host's pid and stdio.
func (s *service) State(ctx context.Context, r *task.StateRequest) (*task.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if st, _, _ := p.status(); st == stateStopped || c.vm.isDead() {
		return p.localState(), nil
	}
	wait := guestStateTimeout
	if dl, ok := ctx.Deadline(); ok {
		// Half of what the caller gives: the rest to answer locally.
		wait = min(wait, time.Until(dl)/2)
	}
	sctx, cancel := context.WithTimeout(ctx, wait)
	resp, err := c.vm.task.State(sctx, &task.StateRequest{ID: r.ID, ExecID: r.ExecID})
	cancel()
	if err != nil {
		if agentGone(c.vm, err) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// A guest that does not answer must not hang `ctr task ls`
			// (containerd asks every task's State).
			return p.localState(), nil
		}
		return nil, errgrpc.ToGRPC(fromAgent(err))
	}
	local := p.localState()
	resp.ID, resp.Bundle, resp.Pid = local.ID, local.Bundle, local.Pid
	resp.Stdin, resp.Stdout, resp.Stderr, resp.Terminal = local.Stdin, local.Stdout, local.Stderr, local.Terminal
	return resp, nil
}

// Kill signals a process (all of the container's with All).
func (s *service) Kill(ctx context.Context, r *task.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	sigkill := r.Signal == uint32(unix.SIGKILL)
	if sigkill {
		p.mu.Lock()
		p.killed = true
		p.mu.Unlock()
	}
	if p.isExited() || c.vm.isDead() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "%s: process already finished", p.name())
	}
	kctx := ctx
	if sigkill && r.ExecID == "" {
		// SIGKILL must work on a wedged guest too: then the VM goes.
		var cancel context.CancelFunc
		kctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	_, err = c.vm.task.Kill(kctx, &task.KillRequest{ID: r.ID, ExecID: r.ExecID, Signal: r.Signal, All: r.All})
	switch {
	case err == nil:
		if sigkill && r.ExecID == "" {
			go p.killVMUnlessExited(killExitWait)
		}
		return &emptypb.Empty{}, nil
	case sigkill && r.ExecID == "" && (agentGone(c.vm, err) || errors.Is(err, context.DeadlineExceeded)):
		log.G(ctx).WithError(err).Warnf("%s: SIGKILL through the agent failed: killing the VM", p.name())
		c.vm.kill()
		return &emptypb.Empty{}, nil
	case agentGone(c.vm, err):
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "%s: VM is gone, process already finished", p.name())
	}
	return nil, errgrpc.ToGRPC(fromAgent(err))
}

// Wait returns once the process has exited and all its output is out.
func (s *service) Wait(ctx context.Context, r *task.WaitRequest) (*task.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, errgrpc.ToGRPC(ctx.Err())
	}
	_, code, at := p.status()
	return &task.WaitResponse{ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

func (s *service) Shutdown(ctx context.Context, r *task.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdownAsked = true
	s.shutdownIfAsked()
	return &emptypb.Empty{}, nil
}

// shutdownIfAsked shuts the shim down once containerd asked for it and
// it serves nothing: no container, no create under way. containerd asks
// after a failed (or cancelled) create while the shim may still be tearing
// that VM down; without this the shim would outlive it, serving nothing.
// Call with s.mu held.
func (s *service) shutdownIfAsked() {
	if s.shutdownAsked && len(s.containers) == 0 && len(s.creating) == 0 {
		s.sd.Shutdown()
	}
}
