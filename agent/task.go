package agent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	runcopts "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/msb-dev/msb/protocol"
)

// container is one runc container in the guest.
type container struct {
	id     string
	bundle string
	spec   *specs.Spec
	init   *process

	mu      sync.Mutex
	started bool
	paused  bool
	execs   map[string]*process
}

// validID is runc's container ID grammar.
var validID = regexp.MustCompile(`^[\w+\-.]+$`)

// runc returns a runc client that logs to the bundle's log.json, so the
// reason of a failure can be reported.
func (a *Agent) runc(bundle string) *runc.Runc {
	r := &runc.Runc{Command: a.opts.RuncPath, Root: a.opts.RuncRoot}
	if bundle != "" {
		r.Log = filepath.Join(bundle, "log.json")
		r.LogFormat = runc.JSON
	}
	return r
}

// logMark is the size of a bundle's runc log before a command, so only the
// command's own messages are read after it failed.
func logMark(bundle string) int64 {
	fi, err := os.Stat(filepath.Join(bundle, "log.json"))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// runtimeError adds runc's last error message (from its JSON log) to err.
func runtimeError(bundle string, mark int64, what string, err error) error {
	msg := ""
	if f, ferr := os.Open(filepath.Join(bundle, "log.json")); ferr == nil {
		if _, ferr := f.Seek(mark, io.SeekStart); ferr == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				var l struct{ Level, Msg string }
				if json.Unmarshal(sc.Bytes(), &l) == nil && l.Level == "error" {
					msg = l.Msg
				}
			}
		}
		f.Close()
	}
	if msg == "" {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %s: %w", what, strings.TrimSpace(msg), err)
}

// ioOwner is the host-side uid/gid of a process's user: the owner of its
// stdio pipes, so it can reopen them (/dev/stdout).
func ioOwner(spec *specs.Spec, user specs.User) (int, int) {
	uid, gid := user.UID, user.GID
	if spec != nil && spec.Linux != nil {
		uid = mapID(spec.Linux.UIDMappings, uid)
		gid = mapID(spec.Linux.GIDMappings, gid)
	}
	return int(uid), int(gid)
}

func mapID(ms []specs.LinuxIDMapping, id uint32) uint32 {
	if len(ms) == 0 {
		return id
	}
	for _, m := range ms {
		if id >= m.ContainerID && id-m.ContainerID < m.Size {
			return m.HostID + (id - m.ContainerID)
		}
	}
	return 65534 // overflow id
}

// getContainer returns the container or NotFound.
func (a *Agent) getContainer(id string) (*container, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// getProcess returns the init process (execID "") or an exec process.
func (a *Agent) getProcess(id, execID string) (*container, *process, error) {
	c, err := a.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %q in container %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

func (a *Agent) create(ctx context.Context, r *task.CreateTaskRequest) (_ *task.CreateTaskResponse, retErr error) {
	switch {
	case r.Terminal:
		return nil, fmt.Errorf("create %q: terminal (tty) processes are not supported by the msb guest agent yet: %w", r.ID, errdefs.ErrNotImplemented)
	case r.Checkpoint != "":
		return nil, fmt.Errorf("create %q: restore from checkpoint is not supported in msb VMs: %w", r.ID, errdefs.ErrNotImplemented)
	case len(r.Rootfs) > 0:
		return nil, fmt.Errorf("create %q: rootfs mounts must be set up by the host (the guest spec's root.path names the rootfs in the guest): %w", r.ID, errdefs.ErrInvalidArgument)
	case !validID.MatchString(r.ID) || r.ID == "." || r.ID == "..":
		return nil, fmt.Errorf("create: invalid container id %q (want [A-Za-z0-9_+.-]+): %w", r.ID, errdefs.ErrInvalidArgument)
	case r.Options == nil || r.Options.TypeUrl != protocol.GuestSpecTypeURL:
		got := "none"
		if r.Options != nil {
			got = r.Options.TypeUrl
		}
		return nil, fmt.Errorf("create %q: options must be the guest OCI spec (type %s), got %s: %w", r.ID, protocol.GuestSpecTypeURL, got, errdefs.ErrInvalidArgument)
	}
	var spec specs.Spec
	if err := json.Unmarshal(r.Options.Value, &spec); err != nil {
		return nil, fmt.Errorf("create %q: guest spec: %v: %w", r.ID, err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil || spec.Root == nil {
		return nil, fmt.Errorf("create %q: guest spec has no process or no root: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	if spec.Process.Terminal {
		return nil, fmt.Errorf("create %q: terminal (tty) processes are not supported by the msb guest agent yet: %w", r.ID, errdefs.ErrNotImplemented)
	}

	a.mu.Lock()
	if _, ok := a.containers[r.ID]; ok || a.reserved[r.ID] {
		a.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	a.reserved[r.ID] = true
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.reserved, r.ID)
		a.mu.Unlock()
	}()

	bundle := filepath.Join(a.opts.BundleRoot, r.ID)
	_ = os.RemoveAll(bundle) // stale, from a container this agent does not know
	if err := os.MkdirAll(bundle, 0o711); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(bundle)
		}
	}()
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), r.Options.Value, 0o600); err != nil {
		return nil, err
	}

	p := newProcess(a, r.ID, "")
	if err := p.openStreams(ctx, r.Stdin, r.Stdout, r.Stderr); err != nil {
		return nil, fmt.Errorf("create %q: %w", r.ID, err)
	}
	uid, gid := ioOwner(&spec, spec.Process.User)
	pio, err := p.newIO(uid, gid)
	if err != nil {
		p.abandonIO()
		return nil, err
	}

	a.exits.begin()
	defer a.exits.end()
	rc := a.runc(bundle)
	pidFile := filepath.Join(bundle, "init.pid")
	mark := logMark(bundle)
	// Not the request's context: a runc killed half-way leaves a mess.
	if err := rc.Create(context.Background(), r.ID, bundle, &runc.CreateOpts{IO: pio, PidFile: pidFile, NoPivot: a.opts.NoPivot}); err != nil {
		pio.Close()
		p.abandonIO()
		rerr := runtimeError(bundle, mark, "OCI runtime create failed", err)
		_ = rc.Delete(context.Background(), r.ID, &runc.DeleteOpts{Force: true})
		return nil, rerr
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		pio.Close()
		p.abandonIO()
		_ = rc.Delete(context.Background(), r.ID, &runc.DeleteOpts{Force: true})
		return nil, fmt.Errorf("create %q: read pid file: %w", r.ID, err)
	}
	p.pid = pid
	p.startCopy(pio)
	a.exits.watch(pid, p)

	c := &container{id: r.ID, bundle: bundle, spec: &spec, init: p, execs: map[string]*process{}}
	a.mu.Lock()
	a.containers[r.ID] = c
	a.mu.Unlock()
	log.L.Infof("container %s created (pid %d)", r.ID, pid)
	return &task.CreateTaskResponse{Pid: uint32(pid)}, nil
}

func (a *Agent) start(ctx context.Context, r *task.StartRequest) (*task.StartResponse, error) {
	c, p, err := a.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		return a.startExec(c, p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return nil, fmt.Errorf("container %q already started: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	if p.exitSeenLocked() {
		return nil, fmt.Errorf("container %q: init process already exited: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	mark := logMark(c.bundle)
	if err := a.runc(c.bundle).Start(context.Background(), r.ID); err != nil {
		return nil, runtimeError(c.bundle, mark, "OCI runtime start failed", err)
	}
	c.started = true
	p.mu.Lock()
	if p.state == stateCreated {
		p.state = stateRunning
	}
	p.mu.Unlock()
	return &task.StartResponse{Pid: uint32(p.pid)}, nil
}

func (p *process) exitSeenLocked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitSeen
}

func (a *Agent) exec(ctx context.Context, r *task.ExecProcessRequest) error {
	if r.Terminal {
		return fmt.Errorf("exec %q in %q: terminal (tty) processes are not supported by the msb guest agent yet: %w", r.ExecID, r.ID, errdefs.ErrNotImplemented)
	}
	if r.ExecID == "" {
		return fmt.Errorf("exec in %q: empty exec id: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	if r.Spec == nil || !(r.Spec.TypeUrl == protocol.ProcessSpecTypeURL || strings.HasSuffix(r.Spec.TypeUrl, "/runtime-spec/1/Process")) {
		return fmt.Errorf("exec %q in %q: spec must be an OCI process (type %s): %w", r.ExecID, r.ID, protocol.ProcessSpecTypeURL, errdefs.ErrInvalidArgument)
	}
	var ps specs.Process
	if err := json.Unmarshal(r.Spec.Value, &ps); err != nil {
		return fmt.Errorf("exec %q in %q: process spec: %v: %w", r.ExecID, r.ID, err, errdefs.ErrInvalidArgument)
	}
	if ps.Terminal {
		return fmt.Errorf("exec %q in %q: terminal (tty) processes are not supported by the msb guest agent yet: %w", r.ExecID, r.ID, errdefs.ErrNotImplemented)
	}
	c, err := a.getContainer(r.ID)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		c.mu.Unlock()
		return fmt.Errorf("exec %q in %q: %w", r.ExecID, r.ID, errdefs.ErrAlreadyExists)
	}
	if !c.started || c.init.isDone() || c.init.exitSeenLocked() {
		c.mu.Unlock()
		return fmt.Errorf("exec %q in %q: container is not running: %w", r.ExecID, r.ID, errdefs.ErrFailedPrecondition)
	}
	p := newProcess(a, r.ID, r.ExecID)
	p.spec = &ps
	c.execs[r.ExecID] = p // reserved; streams are claimed below
	c.mu.Unlock()
	if err := p.openStreams(ctx, r.Stdin, r.Stdout, r.Stderr); err != nil {
		c.mu.Lock()
		delete(c.execs, r.ExecID)
		c.mu.Unlock()
		return fmt.Errorf("exec %q in %q: %w", r.ExecID, r.ID, err)
	}
	return nil
}

func (a *Agent) startExec(c *container, p *process) (*task.StartResponse, error) {
	p.mu.Lock()
	if p.state != stateCreated || p.pid != 0 || p.starting {
		p.mu.Unlock()
		return nil, fmt.Errorf("exec %q in %q already started: %w", p.execID, p.cid, errdefs.ErrFailedPrecondition)
	}
	p.starting = true
	p.mu.Unlock()
	if c.init.isDone() || c.init.exitSeenLocked() {
		p.failStart()
		return nil, fmt.Errorf("exec %q in %q: container is not running: %w", p.execID, p.cid, errdefs.ErrFailedPrecondition)
	}
	uid, gid := ioOwner(c.spec, p.spec.User)
	pio, err := p.newIO(uid, gid)
	if err != nil {
		p.failStart()
		return nil, err
	}
	sum := sha256.Sum256([]byte(p.execID))
	pidFile := filepath.Join(c.bundle, "exec-"+hex.EncodeToString(sum[:8])+".pid")
	defer os.Remove(pidFile)

	a.exits.begin()
	defer a.exits.end()
	mark := logMark(c.bundle)
	if err := a.runc(c.bundle).Exec(context.Background(), c.id, *p.spec, &runc.ExecOpts{IO: pio, PidFile: pidFile, Detach: true}); err != nil {
		pio.Close()
		p.failStart()
		return nil, runtimeError(c.bundle, mark, "OCI runtime exec failed", err)
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		pio.Close()
		p.failStart()
		return nil, fmt.Errorf("exec %q in %q: read pid file: %w", p.execID, p.cid, err)
	}
	p.mu.Lock()
	p.pid = pid
	p.state = stateRunning
	p.mu.Unlock()
	p.startCopy(pio)
	a.exits.watch(pid, p)
	return &task.StartResponse{Pid: uint32(pid)}, nil
}

// failStart marks an exec process that could not be started as exited with
// status 255 (as a shell reports a command it cannot run), closing its
// streams, so Wait and Delete work on it.
func (p *process) failStart() {
	p.abandonIO()
	p.mu.Lock()
	if p.exitSeen {
		p.mu.Unlock()
		return
	}
	p.exitSeen = true
	p.exitStatus = 255
	p.exitedAt = time.Now()
	p.state = stateStopped
	p.mu.Unlock()
	close(p.done)
}

func (a *Agent) kill(ctx context.Context, r *task.KillRequest) error {
	c, p, err := a.getProcess(r.ID, r.ExecID)
	if err != nil {
		return err
	}
	if p.exitSeenLocked() {
		return fmt.Errorf("%s: process already finished: %w", p.name(), errdefs.ErrNotFound)
	}
	if r.ExecID != "" {
		p.mu.Lock()
		pid := p.pid
		p.mu.Unlock()
		if pid == 0 {
			return fmt.Errorf("%s: process not started: %w", p.name(), errdefs.ErrFailedPrecondition)
		}
		if err := unix.Kill(pid, unix.Signal(r.Signal)); err != nil {
			if errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("%s: process already finished: %w", p.name(), errdefs.ErrNotFound)
			}
			return fmt.Errorf("%s: kill: %w", p.name(), err)
		}
		return nil
	}
	mark := logMark(c.bundle)
	if err := a.runc(c.bundle).Kill(context.Background(), r.ID, int(r.Signal), &runc.KillOpts{All: r.All}); err != nil {
		if p.exitSeenLocked() {
			return fmt.Errorf("%s: process already finished: %w", p.name(), errdefs.ErrNotFound)
		}
		return runtimeError(c.bundle, mark, "OCI runtime kill failed", err)
	}
	return nil
}

func (a *Agent) deleteTask(ctx context.Context, r *task.DeleteRequest) (*task.DeleteResponse, error) {
	c, p, err := a.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		st, pid, code, at := p.status()
		p.mu.Lock()
		starting := p.starting
		p.mu.Unlock()
		switch {
		case st == stateCreated && !starting:
			p.abandonIO()
		case st != stateStopped:
			return nil, fmt.Errorf("%s: cannot delete a running process: %w", p.name(), errdefs.ErrFailedPrecondition)
		}
		c.mu.Lock()
		delete(c.execs, r.ExecID)
		c.mu.Unlock()
		return &task.DeleteResponse{Pid: uint32(pid), ExitStatus: uint32(code), ExitedAt: ts(at)}, nil
	}

	c.mu.Lock()
	started := c.started
	c.mu.Unlock()
	if started && !p.isDone() {
		return nil, fmt.Errorf("container %q: cannot delete a running task: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	if err := a.destroy(c, 10*time.Second); err != nil {
		return nil, err
	}
	_, pid, code, at := p.status()
	return &task.DeleteResponse{Pid: uint32(pid), ExitStatus: uint32(code), ExitedAt: ts(at)}, nil
}

// destroy kills what is left of c, deletes it from runc, and forgets it.
func (a *Agent) destroy(c *container, grace time.Duration) error {
	rc := a.runc(c.bundle)
	if !c.init.isDone() {
		_ = rc.Kill(context.Background(), c.id, int(unix.SIGKILL), &runc.KillOpts{All: true})
	}
	mark := logMark(c.bundle)
	if err := rc.Delete(context.Background(), c.id, &runc.DeleteOpts{Force: true}); err != nil {
		if _, serr := rc.State(context.Background(), c.id); serr == nil {
			return runtimeError(c.bundle, mark, "OCI runtime delete failed", err)
		}
		// Gone already.
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := c.init.wait(ctx); err != nil {
		log.L.Warnf("container %s: init process did not finish within %s after delete", c.id, grace)
	}
	c.mu.Lock()
	execs := slices.Collect(maps.Values(c.execs))
	c.mu.Unlock()
	for _, e := range execs {
		st, _, _, _ := e.status()
		if st == stateCreated {
			e.abandonIO()
			continue
		}
		if err := e.wait(ctx); err != nil {
			log.L.Warnf("%s: did not finish within %s after its container was deleted", e.name(), grace)
		}
	}
	_ = os.RemoveAll(c.bundle)
	a.mu.Lock()
	delete(a.containers, c.id)
	a.mu.Unlock()
	log.L.Infof("container %s deleted", c.id)
	return nil
}

// KillAll kills and deletes every container (shutdown, end of Serve).
func (a *Agent) KillAll() {
	a.mu.Lock()
	cs := slices.Collect(maps.Values(a.containers))
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.destroy(c, 5*time.Second); err != nil {
				log.L.WithError(err).Warnf("container %s", c.id)
			}
		}()
	}
	wg.Wait()
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (a *Agent) state(ctx context.Context, r *task.StateRequest) (*task.StateResponse, error) {
	c, p, err := a.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, pid, code, at := p.status()
	c.mu.Lock()
	paused := c.paused
	c.mu.Unlock()
	var s tasktypes.Status
	switch {
	case st == stateStopped:
		s = tasktypes.Status_STOPPED
	case paused:
		s = tasktypes.Status_PAUSED
	case st == stateRunning:
		s = tasktypes.Status_RUNNING
	default:
		s = tasktypes.Status_CREATED
	}
	resp := &task.StateResponse{
		ID:     r.ID,
		ExecID: r.ExecID,
		Bundle: c.bundle,
		Pid:    uint32(pid),
		Status: s,
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

func (a *Agent) wait(ctx context.Context, r *task.WaitRequest) (*task.WaitResponse, error) {
	_, p, err := a.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.wait(ctx); err != nil {
		return nil, err
	}
	_, _, code, at := p.status()
	return &task.WaitResponse{ExitStatus: uint32(code), ExitedAt: ts(at)}, nil
}

func (a *Agent) pids(ctx context.Context, r *task.PidsRequest) (*task.PidsResponse, error) {
	c, err := a.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	mark := logMark(c.bundle)
	pids, err := a.runc(c.bundle).Ps(context.Background(), r.ID)
	if err != nil {
		return nil, runtimeError(c.bundle, mark, "OCI runtime ps failed", err)
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

func (a *Agent) closeIO(ctx context.Context, r *task.CloseIORequest) error {
	_, p, err := a.getProcess(r.ID, r.ExecID)
	if err != nil {
		return err
	}
	if r.Stdin {
		p.closeIO(ctx)
	}
	return nil
}

func (a *Agent) pauseResume(id string, pause bool) error {
	c, err := a.getContainer(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := a.runc(c.bundle)
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
		return runtimeError(c.bundle, mark, what, err)
	}
	c.paused = pause
	return nil
}

func (a *Agent) update(ctx context.Context, r *task.UpdateTaskRequest) error {
	c, err := a.getContainer(r.ID)
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
	if err := a.runc(c.bundle).Update(context.Background(), r.ID, &res); err != nil {
		return runtimeError(c.bundle, mark, "OCI runtime update failed", err)
	}
	return nil
}

// taskService adapts the Agent to containerd's task API v3.
type taskService struct{ a *Agent }

var _ task.TTRPCTaskService = (*taskService)(nil)

func unimplemented(what string) error {
	return toStatus(fmt.Errorf("%s is not supported by the msb guest agent: %w", what, errdefs.ErrNotImplemented))
}

func (s *taskService) State(ctx context.Context, r *task.StateRequest) (*task.StateResponse, error) {
	resp, err := s.a.state(ctx, r)
	return resp, toStatus(err)
}

func (s *taskService) Create(ctx context.Context, r *task.CreateTaskRequest) (*task.CreateTaskResponse, error) {
	resp, err := s.a.create(ctx, r)
	return resp, toStatus(err)
}

func (s *taskService) Start(ctx context.Context, r *task.StartRequest) (*task.StartResponse, error) {
	resp, err := s.a.start(ctx, r)
	return resp, toStatus(err)
}

func (s *taskService) Delete(ctx context.Context, r *task.DeleteRequest) (*task.DeleteResponse, error) {
	resp, err := s.a.deleteTask(ctx, r)
	return resp, toStatus(err)
}

func (s *taskService) Pids(ctx context.Context, r *task.PidsRequest) (*task.PidsResponse, error) {
	resp, err := s.a.pids(ctx, r)
	return resp, toStatus(err)
}

func (s *taskService) Pause(ctx context.Context, r *task.PauseRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, toStatus(s.a.pauseResume(r.ID, true))
}

func (s *taskService) Resume(ctx context.Context, r *task.ResumeRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, toStatus(s.a.pauseResume(r.ID, false))
}

func (s *taskService) Checkpoint(ctx context.Context, r *task.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("checkpoint")
}

func (s *taskService) Kill(ctx context.Context, r *task.KillRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, toStatus(s.a.kill(ctx, r))
}

func (s *taskService) Exec(ctx context.Context, r *task.ExecProcessRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, toStatus(s.a.exec(ctx, r))
}

func (s *taskService) ResizePty(ctx context.Context, r *task.ResizePtyRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("resize pty (terminals)")
}

func (s *taskService) CloseIO(ctx context.Context, r *task.CloseIORequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, toStatus(s.a.closeIO(ctx, r))
}

func (s *taskService) Update(ctx context.Context, r *task.UpdateTaskRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, toStatus(s.a.update(ctx, r))
}

func (s *taskService) Wait(ctx context.Context, r *task.WaitRequest) (*task.WaitResponse, error) {
	resp, err := s.a.wait(ctx, r)
	return resp, toStatus(err)
}

func (s *taskService) Stats(ctx context.Context, r *task.StatsRequest) (*task.StatsResponse, error) {
	return nil, unimplemented("stats")
}

func (s *taskService) Connect(ctx context.Context, r *task.ConnectRequest) (*task.ConnectResponse, error) {
	resp := &task.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "msb-agent " + Version}
	if c, err := s.a.getContainer(r.ID); err == nil {
		resp.TaskPid = uint32(c.init.pid)
	}
	return resp, nil
}

func (s *taskService) Shutdown(ctx context.Context, r *task.ShutdownRequest) (*emptypb.Empty, error) {
	// The VM's lifetime is the host's business (Agent.Shutdown).
	return &emptypb.Empty{}, nil
}
