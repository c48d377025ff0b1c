package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	eventstypes "github.com/containerd/containerd/api/events"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/shim/cgstats"
	"github.com/msb-dev/msb/version"
)

// The task API calls outside a container's lifecycle (create, start,
// exec, kill, wait and delete are in service.go): queries and adjustments,
// mostly forwarded to the guest as they are.

// Pids lists the container's processes (ADR 008): one entry per guest
// process, each with the task's host pid (the VMM's), because docker top
// and nerdctl top filter the host's ps by these pids and a guest pid
// would name an unrelated host process. The guest pid, with the exec id
// the agent gives, is in Info as a containerd.v1.types.ProcessInfo.
func (s *service) Pids(ctx context.Context, r *task.PidsRequest) (*task.PidsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	resp, err := c.vm.task.Pids(ctx, &task.PidsRequest{ID: r.ID})
	if err != nil {
		if agentGone(c.vm, err) {
			return &task.PidsResponse{}, nil
		}
		return nil, errgrpc.ToGRPC(fromAgent(err))
	}
	return hostPids(resp, c.hostPid())
}

// hostPids rewrites the agent's process list for the host: every pid
// becomes hostPid, the guest's entry moves into Info.
func hostPids(guest *task.PidsResponse, hostPid uint32) (*task.PidsResponse, error) {
	out := &task.PidsResponse{}
	for _, p := range guest.Processes {
		info, err := typeurl.MarshalAnyToProto(p)
		if err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("guest pid %d: %w", p.Pid, err))
		}
		out.Processes = append(out.Processes, &tasktypes.ProcessInfo{Pid: hostPid, Info: info})
	}
	return out, nil
}

// Pause freezes the container's processes in the guest.
func (s *service) Pause(ctx context.Context, r *task.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if _, err := c.vm.task.Pause(ctx, &task.PauseRequest{ID: r.ID}); err != nil {
		return nil, errgrpc.ToGRPC(fromAgent(err))
	}
	s.send(&eventstypes.TaskPaused{ContainerID: c.id})
	return &emptypb.Empty{}, nil
}

// Resume thaws the container.
func (s *service) Resume(ctx context.Context, r *task.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if _, err := c.vm.task.Resume(ctx, &task.ResumeRequest{ID: r.ID}); err != nil {
		return nil, errgrpc.ToGRPC(fromAgent(err))
	}
	s.send(&eventstypes.TaskResumed{ContainerID: c.id})
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported.
func (s *service) Checkpoint(ctx context.Context, r *task.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented,
		"checkpoint of %q: msb runs containers in microVMs and cannot checkpoint them (no CRIU in the guest, and VM snapshots are not implemented)", r.ID)
}

// ResizePty forwards a terminal resize to the guest.
func (s *service) ResizePty(ctx context.Context, r *task.ResizePtyRequest) (*emptypb.Empty, error) {
	c, _, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if _, err := c.vm.task.ResizePty(ctx, r); err != nil {
		return nil, errgrpc.ToGRPC(fromAgent(err))
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin once what the client wrote is passed on.
func (s *service) CloseIO(ctx context.Context, r *task.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.io.CloseStdin()
	}
	return &emptypb.Empty{}, nil
}

// Update changes the container's resources inside the guest. Its VM (a
// pod member's: the pod's) follows a memory limit within its headroom
// (launch.Resize, ADR 031); what it cannot give is refused before the
// guest sees it, so the guest's cgroup never reports a resize that did
// not happen (docs/kubernetes.md).
func (s *service) Update(ctx context.Context, r *task.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	res, err := updateResources(r)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	guest := func() error {
		if _, err := c.vm.task.Update(ctx, r); err != nil {
			return fromAgent(err)
		}
		return nil
	}
	if res == nil {
		return nil, errgrpc.ToGRPC(guest())
	}
	// One resize of a VM at a time: each moves it by its container's change.
	c.vm.resizeMu.Lock()
	defer c.vm.resizeMu.Unlock()
	mib, err := launch.Resize(ctx, c.vm.launch.AgentSocket, c.vm.size(), c.memLimit(), res, guest)
	if mib > 0 {
		c.vm.memoryMiB.Store(int64(mib))
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("update %s: %w", r.ID, err))
	}
	if m := res.Memory; m != nil && m.Limit != nil {
		c.setMemLimit(*m.Limit)
	}
	return &emptypb.Empty{}, nil
}

// updateResources decodes OCI resources from r; nil for resources in
// another form, which the agent refuses.
func updateResources(r *task.UpdateTaskRequest) (*specs.LinuxResources, error) {
	if r.Resources == nil || !strings.HasSuffix(r.Resources.TypeUrl, "/runtime-spec/1/LinuxResources") {
		return nil, nil
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.Value, &res); err != nil {
		return nil, fmt.Errorf("update %s: resources: %v: %w", r.ID, err, errdefs.ErrInvalidArgument)
	}
	return &res, nil
}

// Stats returns the container's cgroup metrics from inside the guest, in
// the type for the host's cgroup mode (cgstats).
func (s *service) Stats(ctx context.Context, r *task.StatsRequest) (*task.StatsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	resp, err := c.vm.task.Stats(ctx, r)
	if err != nil {
		return nil, errgrpc.ToGRPC(fromAgent(err))
	}
	if resp.Stats, err = cgstats.ForHost(resp.Stats); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return resp, nil
}

// Connect returns the shim's pid and the container's (its VMM's).
func (s *service) Connect(ctx context.Context, r *task.ConnectRequest) (*task.ConnectResponse, error) {
	resp := &task.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: version.Version}
	if c, err := s.get(r.ID); err == nil {
		resp.TaskPid = c.hostPid()
	}
	return resp, nil
}

// Shutdown ends the shim once it serves no container.
