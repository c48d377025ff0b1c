package task

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/protocol"
)

func (s *Service) exec(ctx context.Context, r *task.ExecProcessRequest) error {
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
	if err := checkTerminal(fmt.Sprintf("exec %q in %q", r.ExecID, r.ID), r.Terminal, ps.Terminal); err != nil {
		return err
	}
	c, err := s.getContainer(r.ID)
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
	p := newProcess(s, r.ID, r.ExecID)
	p.spec = &ps
	p.tty = r.Terminal
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

func (s *Service) startExec(c *container, p *process) (*task.StartResponse, error) {
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
	sock, err := p.consoleSocket()
	if err != nil {
		pio.Close()
		p.failStart()
		return nil, err
	}
	eopts := &runc.ExecOpts{IO: pio, PidFile: pidFile, Detach: true}
	ps := *p.spec
	p.mu.Lock()
	if ws := p.winsize; ws != nil {
		// runc sizes the pty it makes: the process never sees a resize
		// (SIGWINCH) as it starts.
		ps.ConsoleSize = &specs.Box{Height: uint(ws.Row), Width: uint(ws.Col)}
		p.winsize = nil
	}
	p.mu.Unlock()
	if sock != nil {
		defer sock.Close()
		eopts.ConsoleSocket = sock
	}

	s.exits.begin()
	defer s.exits.end()
	mark := logMark(c.bundle)
	rc, ctx := s.execRuntime(c)
	oom := watchExecOOM(c)
	if err := rc.Exec(ctx, c.id, ps, eopts); err != nil {
		pio.Close()
		p.failStart()
		return nil, oom.explain(s.runtimeError(c.bundle, mark, "OCI runtime exec failed", err))
	}
	var master *os.File
	pid, err := runc.ReadPidFile(pidFile)
	if err == nil && sock != nil {
		master, err = receiveMaster(sock)
	}
	if err != nil {
		// The process runs, but without its pid or pty it cannot be
		// tracked: it goes.
		if pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		pio.Close()
		p.failStart()
		return nil, fmt.Errorf("exec %q in %q: %w", p.execID, p.cid, err)
	}
	p.mu.Lock()
	p.pid = pid
	p.state = stateRunning
	p.mu.Unlock()
	p.startCopy(pio, master)
	s.exits.watch(pid, p)
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
