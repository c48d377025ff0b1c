package task

import (
	"bufio"
	"context"
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
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/protocol"
)

// container is one container in the guest, run by the OCI runtime (runc
// or crun).
type container struct {
	id     string
	bundle string
	spec   *specs.Spec
	init   *process

	// cgroup is the container's cgroup v2 path below /sys/fs/cgroup (""
	// if unknown): Stats and OOM watching read it.
	cgroup string

	mu      sync.Mutex
	started bool
	paused  bool
	execs   map[string]*process
	// oomKills is the last oom_kill count seen in memory.events (guarded
	// by Service.ooms.mu).
	oomKills uint64
}

// validID is runc's container ID grammar.
var validID = regexp.MustCompile(`^[\w+\-.]+$`)

// runc returns a client of the OCI runtime (runc, or crun: the same
// command line) that logs to the bundle's log.json, so the reason of a
// failure can be reported.
func (s *Service) runc(bundle string) *runc.Runc {
	r := &runc.Runc{Command: s.opts.RuntimePath, Root: s.opts.RuntimeRoot}
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

// runtimeError adds the runtime's name and its last error message (from
// its JSON log: runc and crun write the same "level" and "msg") to err.
func (s *Service) runtimeError(bundle string, mark int64, what string, err error) error {
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
		return fmt.Errorf("%s: %s: %w", what, s.runtimeName(), err)
	}
	return fmt.Errorf("%s: %s: %s: %w", what, s.runtimeName(), strings.TrimSpace(msg), err)
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
func (s *Service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// getProcess returns the init process (execID "") or an exec process.
func (s *Service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.getContainer(id)
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

func (s *Service) create(ctx context.Context, r *task.CreateTaskRequest) (_ *task.CreateTaskResponse, retErr error) {
	switch {
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
	if err := checkTerminal(fmt.Sprintf("create %q", r.ID), r.Terminal, spec.Process.Terminal); err != nil {
		return nil, err
	}

	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok || s.reserved[r.ID] {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	s.reserved[r.ID] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.reserved, r.ID)
		s.mu.Unlock()
		if retErr != nil {
			s.unprepare(r.ID) // a pod container's Prepare mounts
		}
	}()

	bundle := filepath.Join(s.opts.BundleRoot, r.ID)
	_ = os.RemoveAll(bundle) // stale, from a container this agent does not know
	if err := os.MkdirAll(bundle, 0o711); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(bundle)
		}
	}()
	config := r.Options.Value
	adapted, err := s.runtimeSpec(&spec)
	if err != nil {
		return nil, fmt.Errorf("create %q: %w", r.ID, err)
	}
	if changed := guestDefaults(&spec); adapted || changed {
		b, err := json.Marshal(&spec)
		if err != nil {
			return nil, err
		}
		config = b
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), config, 0o600); err != nil {
		return nil, err
	}

	p := newProcess(s, r.ID, "")
	p.tty = r.Terminal
	if err := p.openStreams(ctx, r.Stdin, r.Stdout, r.Stderr); err != nil {
		return nil, fmt.Errorf("create %q: %w", r.ID, err)
	}
	uid, gid := ioOwner(&spec, spec.Process.User)
	pio, err := p.newIO(uid, gid)
	if err != nil {
		p.abandonIO()
		return nil, err
	}
	sock, err := p.consoleSocket()
	if err != nil {
		pio.Close()
		p.abandonIO()
		return nil, err
	}
	if sock != nil {
		defer sock.Close()
	}

	s.exits.begin()
	defer s.exits.end()
	rc := s.runc(bundle)
	pidFile := filepath.Join(bundle, "init.pid")
	mark := logMark(bundle)
	// Not the request's context: a runc killed half-way leaves a mess.
	copts := &runc.CreateOpts{IO: pio, PidFile: pidFile, NoPivot: s.opts.NoPivot}
	if sock != nil {
		copts.ConsoleSocket = sock
	}
	if err := rc.Create(context.Background(), r.ID, bundle, copts); err != nil {
		pio.Close()
		p.abandonIO()
		rerr := s.runtimeError(bundle, mark, "OCI runtime create failed", err)
		_ = rc.Delete(context.Background(), r.ID, &runc.DeleteOpts{Force: true})
		return nil, rerr
	}
	var master *os.File
	pid, err := runc.ReadPidFile(pidFile)
	if err == nil && sock != nil {
		master, err = receiveMaster(sock)
	}
	if err != nil {
		pio.Close()
		p.abandonIO()
		_ = rc.Delete(context.Background(), r.ID, &runc.DeleteOpts{Force: true})
		return nil, fmt.Errorf("create %q: %w", r.ID, err)
	}
	p.pid = pid
	c := &container{id: r.ID, bundle: bundle, spec: &spec, init: p, execs: map[string]*process{}}
	if err := s.setInitOOMScore(c); err != nil {
		if master != nil {
			master.Close()
		}
		pio.Close()
		p.abandonIO()
		_ = rc.Delete(context.Background(), r.ID, &runc.DeleteOpts{Force: true})
		return nil, err
	}
	c.cgroup = cgroupOf(pid)
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	s.watchOOM(c)
	p.startCopy(pio, master)
	s.exits.watch(pid, p)
	log.L.Infof("container %s created (pid %d)", r.ID, pid)
	return &task.CreateTaskResponse{Pid: uint32(pid)}, nil
}

func (s *Service) start(ctx context.Context, r *task.StartRequest) (*task.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		return s.startExec(c, p)
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
	if err := s.runc(c.bundle).Start(context.Background(), r.ID); err != nil {
		return nil, s.runtimeError(c.bundle, mark, "OCI runtime start failed", err)
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

func (s *Service) kill(ctx context.Context, r *task.KillRequest) error {
	c, p, err := s.getProcess(r.ID, r.ExecID)
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
	if err := s.runc(c.bundle).Kill(context.Background(), r.ID, int(r.Signal), &runc.KillOpts{All: r.All}); err != nil {
		if p.exitSeenLocked() {
			return fmt.Errorf("%s: process already finished: %w", p.name(), errdefs.ErrNotFound)
		}
		return s.runtimeError(c.bundle, mark, "OCI runtime kill failed", err)
	}
	return nil
}

func (s *Service) deleteTask(ctx context.Context, r *task.DeleteRequest) (*task.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
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
	if err := s.destroy(c, 10*time.Second, false); err != nil {
		return nil, err
	}
	s.unprepare(r.ID)
	_, pid, code, at := p.status()
	return &task.DeleteResponse{Pid: uint32(pid), ExitStatus: uint32(code), ExitedAt: ts(at)}, nil
}

// destroy kills what is left of c, deletes it from runc, and forgets it.
// For a power-off (powerOff) nothing is deleted from runc, whose state
// goes with the VM, and what still runs is killed through its cgroup
// where it can be: each runc command is a process start, which costs a
// tenth of a second under TCG.
func (s *Service) destroy(c *container, grace time.Duration, powerOff bool) error {
	rc := s.runc(c.bundle)
	if !c.init.isDone() && !(powerOff && killCgroup(c.cgroup)) {
		_ = rc.Kill(context.Background(), c.id, int(unix.SIGKILL), &runc.KillOpts{All: true})
	}
	if !powerOff {
		mark := logMark(c.bundle)
		if err := rc.Delete(context.Background(), c.id, &runc.DeleteOpts{Force: true}); err != nil {
			if _, serr := rc.State(context.Background(), c.id); serr == nil {
				return s.runtimeError(c.bundle, mark, "OCI runtime delete failed", err)
			}
			// Gone already.
		}
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
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	log.L.Infof("container %s deleted", c.id)
	return nil
}

// KillAll kills and deletes every container (shutdown, end of Serve).
func (s *Service) KillAll() { s.killAll(false) }

// killAll stops every container; powerOff: for a power-off (destroy).
func (s *Service) killAll(powerOff bool) {
	s.mu.Lock()
	cs := slices.Collect(maps.Values(s.containers))
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.destroy(c, 5*time.Second, powerOff); err != nil {
				log.L.WithError(err).Warnf("container %s", c.id)
			}
		}()
	}
	wg.Wait()
}
