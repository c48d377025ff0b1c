package shim

import (
	"context"
	"fmt"

	eventstypes "github.com/containerd/containerd/api/events"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/msb-dev/msb/shim/taskio"
)

// Exec adds a process to a running container.
func (s *service) Exec(ctx context.Context, r *task.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID == "" {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "exec in %q: empty exec id", r.ID)
	}
	c.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		c.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "id %s", r.ExecID)
	}
	c.execs[r.ExecID] = nil // reserved
	c.mu.Unlock()
	p, err := s.exec(ctx, c, r)
	c.mu.Lock()
	if err != nil {
		delete(c.execs, r.ExecID)
	} else {
		c.execs[r.ExecID] = p
	}
	c.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	s.send(&eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

func (s *service) exec(ctx context.Context, c *container, r *task.ExecProcessRequest) (*proc, error) {
	if c.init.isExited() || c.vm.isDead() {
		return nil, fmt.Errorf("exec %q in %q: container is not running: %w", r.ExecID, r.ID, errdefs.ErrFailedPrecondition)
	}
	spec, err := execProcessSpec(r)
	if err != nil {
		return nil, err
	}
	host := taskio.URIs{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	// The host side (fifos) is opened at Start, as runc's shim does.
	pio, err := taskio.Dial(ctx, c.vm.launch.AgentSocket, host)
	if err != nil {
		return nil, fmt.Errorf("exec %q stdio: %w", r.ExecID, err)
	}
	_, err = c.vm.task.Exec(ctx, &task.ExecProcessRequest{
		ID: r.ID, ExecID: r.ExecID, Terminal: r.Terminal, Spec: spec,
		Stdin: pio.Guest().Stdin, Stdout: pio.Guest().Stdout, Stderr: pio.Guest().Stderr,
	})
	if err != nil {
		pio.Abort()
		return nil, fromAgent(err)
	}
	return newProc(c, r.ExecID, host, pio), nil
}
