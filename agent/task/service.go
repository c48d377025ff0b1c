package task

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	runcopts "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The simpler task RPCs, and the adapter to containerd's task API v3.

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (s *Service) state(ctx context.Context, r *task.StateRequest) (*task.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, pid, code, at := p.status()
	c.mu.Lock()
	paused := c.paused
	c.mu.Unlock()
	var status tasktypes.Status
	switch {
	case st == stateStopped:
		status = tasktypes.Status_STOPPED
	case paused:
		status = tasktypes.Status_PAUSED
	case st == stateRunning:
		status = tasktypes.Status_RUNNING
	default:
		status = tasktypes.Status_CREATED
	}
	resp := &task.StateResponse{
		ID:     r.ID,
		ExecID: r.ExecID,
		Bundle: c.bundle,
		Pid:    uint32(pid),
		Status: status,
		Stdin:  p.stdinURI,
		Stdout: p.stdoutURI,
		Stderr: p.stderrURI,
	}
	if st == stateStopped {
		resp.ExitStatus = uint32(code)
		resp.ExitedAt = ts(at)
	}
	return resp, nil
}

func (s *Service) wait(ctx context.Context, r *task.WaitRequest) (*task.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.wait(ctx); err != nil {
		return nil, err
	}
	_, _, code, at := p.status()
	return &task.WaitResponse{ExitStatus: uint32(code), ExitedAt: ts(at)}, nil
}

func (s *Service) pids(ctx context.Context, r *task.PidsRequest) (*task.PidsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	mark := logMark(c.bundle)
	pids, err := s.runc(c.bundle).Ps(context.Background(), r.ID)
	if err != nil {
		return nil, s.runtimeError(c.bundle, mark, "OCI runtime ps failed", err)
	}
	byPid := map[int]string{}
	c.mu.Lock()
	for id, e := range c.execs {
		e.mu.Lock()
		if e.pid != 0 {
			byPid[e.pid] = id
		}
		e.mu.Unlock()
	}
	c.mu.Unlock()
	resp := &task.PidsResponse{}
	for _, pid := range pids {
		pi := &tasktypes.ProcessInfo{Pid: uint32(pid)}
		if id, ok := byPid[pid]; ok {
			b, err := proto.Marshal(&runcopts.ProcessDetails{ExecID: id})
			if err == nil {
				pi.Info = &anypb.Any{TypeUrl: "containerd.runc.v1.ProcessDetails", Value: b}
			}
		}
		resp.Processes = append(resp.Processes, pi)
	}
	return resp, nil
}

func (s *Service) closeIO(ctx context.Context, r *task.CloseIORequest) error {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return err
	}
	if r.Stdin {
		p.closeIO(ctx)
	}
	return nil
}

func (s *Service) pauseResume(id string, pause bool) error {
	c, err := s.getContainer(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := s.runc(c.bundle)
	mark := logMark(c.bundle)
	if pause {
		err = rc.Pause(context.Background(), id)
	} else {
		err = rc.Resume(context.Background(), id)
	}
	if err != nil {
		what := "OCI runtime resume failed"
		if pause {
			what = "OCI runtime pause failed"
		}
		return s.runtimeError(c.bundle, mark, what, err)
	}
	c.paused = pause
	return nil
}

func (s *Service) update(ctx context.Context, r *task.UpdateTaskRequest) error {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return err
	}
	if r.Resources == nil || !strings.HasSuffix(r.Resources.TypeUrl, "/runtime-spec/1/LinuxResources") {
		return fmt.Errorf("update %q: resources must be OCI LinuxResources (JSON): %w", r.ID, errdefs.ErrInvalidArgument)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.Value, &res); err != nil {
		return fmt.Errorf("update %q: resources: %v: %w", r.ID, err, errdefs.ErrInvalidArgument)
	}
	mark := logMark(c.bundle)
	if err := s.runc(c.bundle).Update(context.Background(), r.ID, &res); err != nil {
		return s.runtimeError(c.bundle, mark, "OCI runtime update failed", err)
	}
	return nil
}

// taskService adapts the Service to containerd's task API v3.
type taskService struct{ svc *Service }

var _ task.TTRPCTaskService = (*taskService)(nil)

func unimplemented(what string) error {
	return ToStatus(fmt.Errorf("%s is not supported by the msb guest agent: %w", what, errdefs.ErrNotImplemented))
}

func (s *taskService) State(ctx context.Context, r *task.StateRequest) (*task.StateResponse, error) {
	resp, err := s.svc.state(ctx, r)
	return resp, ToStatus(err)
}

func (s *taskService) Create(ctx context.Context, r *task.CreateTaskRequest) (*task.CreateTaskResponse, error) {
	resp, err := s.svc.create(ctx, r)
	return resp, ToStatus(err)
}

func (s *taskService) Start(ctx context.Context, r *task.StartRequest) (*task.StartResponse, error) {
	resp, err := s.svc.start(ctx, r)
	return resp, ToStatus(err)
}

func (s *taskService) Delete(ctx context.Context, r *task.DeleteRequest) (*task.DeleteResponse, error) {
	resp, err := s.svc.deleteTask(ctx, r)
	return resp, ToStatus(err)
}

func (s *taskService) Pids(ctx context.Context, r *task.PidsRequest) (*task.PidsResponse, error) {
	resp, err := s.svc.pids(ctx, r)
	return resp, ToStatus(err)
}

func (s *taskService) Pause(ctx context.Context, r *task.PauseRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, ToStatus(s.svc.pauseResume(r.ID, true))
}

func (s *taskService) Resume(ctx context.Context, r *task.ResumeRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, ToStatus(s.svc.pauseResume(r.ID, false))
}

func (s *taskService) Checkpoint(ctx context.Context, r *task.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("checkpoint")
}

func (s *taskService) Kill(ctx context.Context, r *task.KillRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, ToStatus(s.svc.kill(ctx, r))
}

func (s *taskService) Exec(ctx context.Context, r *task.ExecProcessRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, ToStatus(s.svc.exec(ctx, r))
}

func (s *taskService) ResizePty(ctx context.Context, r *task.ResizePtyRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, ToStatus(s.svc.resizePty(ctx, r))
}

func (s *taskService) CloseIO(ctx context.Context, r *task.CloseIORequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, ToStatus(s.svc.closeIO(ctx, r))
}

func (s *taskService) Update(ctx context.Context, r *task.UpdateTaskRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, ToStatus(s.svc.update(ctx, r))
}

func (s *taskService) Wait(ctx context.Context, r *task.WaitRequest) (*task.WaitResponse, error) {
	resp, err := s.svc.wait(ctx, r)
	return resp, ToStatus(err)
}

func (s *taskService) Stats(ctx context.Context, r *task.StatsRequest) (*task.StatsResponse, error) {
	resp, err := s.svc.stats(ctx, r)
	return resp, ToStatus(err)
}

func (s *taskService) Connect(ctx context.Context, r *task.ConnectRequest) (*task.ConnectResponse, error) {
	resp := &task.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "msb-agent " + Version}
	if c, err := s.svc.getContainer(r.ID); err == nil {
		resp.TaskPid = uint32(c.init.pid)
	}
	return resp, nil
}

func (s *taskService) Shutdown(ctx context.Context, r *task.ShutdownRequest) (*emptypb.Empty, error) {
	// The VM's lifetime is the host's business (the Agent service's Shutdown).
	return &emptypb.Empty{}, nil
}
