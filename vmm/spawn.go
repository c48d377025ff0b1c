package vmm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/msb-dev/msb/network"
)

// StartupTimeout bounds the wait for the VMM's startup line.
const StartupTimeout = 30 * time.Second

// SpawnOptions says which binary is the VMM and where its own log goes.
type SpawnOptions struct {
	// Binary and Args start the VMM process, e.g. msb-runtime and ["vmm"].
	Binary string
	Args   []string
	// Log receives the VMM process's stdout and stderr.
	Log string
	// StartupTimeout overrides the 30 s default (tests).
	StartupTimeout time.Duration
	// Stdio are a container-mode VMM's stdio fds (LaunchConfig.Container),
	// from ContainerStdioFD on.
	Stdio []*os.File
}

// Handle is the creator's side of a running VMM process: its child, or a
// pool VM it adopted (Adopt).
type Handle struct {
	Pid   int
	proc  *os.Process
	watch io.WriteCloser // the parent-watch pipe's write end, or an adopted VM's lifeline connection
	done  chan struct{}
	state *os.ProcessState // nil for an adopted VMM, whose status its parent reaps
	err   error
}

// Spawn starts the VMM process for cfg and returns once it has written its
// startup line. On any failure the child is killed and everything Spawn
// reserved (temp file, pipes) is released.
func Spawn(cfg *LaunchConfig, o SpawnOptions) (_ *Handle, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var closers []*os.File
	defer func() {
		for _, f := range closers {
			f.Close()
		}
	}()

	cfgFile, err := configFile(cfg)
	if err != nil {
		return nil, err
	}
	closers = append(closers, cfgFile)

	watchR, watchW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("parent-watch pipe: %w", err)
	}
	closers = append(closers, watchR)
	startR, startW, err := os.Pipe()
	if err != nil {
		watchW.Close()
		return nil, fmt.Errorf("startup pipe: %w", err)
	}
	startWOpen := true
	defer func() {
		if startWOpen {
			startW.Close()
		}
	}()
	closers = append(closers, startR)
	defer func() {
		if retErr != nil {
			watchW.Close()
		}
	}()

	logf, err := os.OpenFile(o.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open VMM log: %w", err)
	}
	closers = append(closers, logf)

	cmd := exec.Command(o.Binary, o.Args...)
	cmd.Stdin = nil // /dev/null
	cmd.Stdout, cmd.Stderr = logf, logf
	// ExtraFiles[i] becomes fd 3+i. os/exec dups every source fd out of the
	// way before the final dup2s, so sources that already sit on 3..5 in
	// this process are handled (see TestSpawnSourceFDsOnTargetNumbers).
	cmd.ExtraFiles = append([]*os.File{cfgFile, watchR, startW}, o.Stdio...)
	// A container's VMM leads its own session, as runc's container init
	// does: the caller's terminal signals do not reach it, and a pty it
	// holds can become its controlling terminal.
	container := cfg.Container != nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: container, Setpgid: !container}
	start := cmd.Start
	if cfg.NetNS == "" {
		// Never the host's namespace: clients configure what the
		// container's pid points at (Docker moves its veth there).
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
	} else {
		start = func() error { return network.InNS(cfg.NetNS, cmd.Start) }
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("start VMM process %s: %w", o.Binary, err)
	}
	h := &Handle{Pid: cmd.Process.Pid, proc: cmd.Process, watch: watchW, done: make(chan struct{})}
	go func() {
		h.state, h.err = cmd.Process.Wait()
		close(h.done)
	}()

	startW.Close() // only the child writes; EOF now means the child died
	startWOpen = false
	timeout := o.StartupTimeout
	if timeout == 0 {
		timeout = StartupTimeout
	}
	if err := readStartup(startR, h.Pid, timeout, h.done); err != nil {
		_ = cmd.Process.Kill()
		<-h.done
		return nil, fmt.Errorf("VMM process %d did not start (see %s): %w", h.Pid, o.Log, err)
	}
	return h, nil
}

// configFile writes cfg to an unlinked temp file, so the config never shows
// on argv or in the filesystem, and dies with the last fd.
func configFile(cfg *LaunchConfig) (*os.File, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode launch config: %w", err)
	}
	f, err := os.CreateTemp(cfg.RuntimeDir, ".launch-*.json")
	if err != nil {
		return nil, fmt.Errorf("launch config temp file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlink launch config: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("write launch config: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// startupLine is the one line a VMM writes on StartupFD once it runs.
type startupLine struct {
	Pid int `json:"pid"`
}

func readStartup(r *os.File, pid int, timeout time.Duration, died <-chan struct{}) error {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		ch <- result{line, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var res result
	select {
	case res = <-ch:
	case <-timer.C:
		return fmt.Errorf("no startup line within %s", timeout)
	}
	if res.err != nil {
		<-timeAfterOr(died, time.Second) // let a crashed child's status settle
		return fmt.Errorf("startup pipe closed before the startup line: %w", res.err)
	}
	var sl startupLine
	if err := json.Unmarshal([]byte(res.line), &sl); err != nil {
		return fmt.Errorf("bad startup line %q: %w", res.line, err)
	}
	if sl.Pid != pid {
		return fmt.Errorf("startup line names pid %d, but the child is %d", sl.Pid, pid)
	}
	return nil
}

func timeAfterOr(ch <-chan struct{}, d time.Duration) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		select {
		case <-ch:
		case <-time.After(d):
		}
		close(out)
	}()
	return out
}

// WriteStartupLine is what the VMM process writes once it runs.
func WriteStartupLine(f *os.File) error {
	b, _ := json.Marshal(startupLine{Pid: os.Getpid()})
	_, err := f.Write(append(b, '\n'))
	return err
}

// Wait blocks until the VMM process exits and returns its exit code. An
// adopted VMM's code is not ours to reap: -1, nil.
func (h *Handle) Wait() (int, error) {
	<-h.done
	if h.err != nil {
		return -1, h.err
	}
	if h.state == nil {
		return -1, nil
	}
	return exitCode(h.state), nil
}

// Done is closed when the VMM process has exited.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Kill sends SIGKILL to the VMM process.
func (h *Handle) Kill() error {
	err := h.proc.Kill()
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Release closes the creator's end of the parent-watch pipe: an attached
// VMM treats that like its creator's death and shuts the guest down.
func (h *Handle) Release() error { return h.watch.Close() }

// Park hands a pool VM (LaunchConfig.Lifeline) to the pool: the VMM
// stops watching this creator and waits for the next on its lifeline
// socket (Adopt). The handle then only waits for the process.
func (h *Handle) Park() error {
	_, err := h.watch.Write([]byte{ParkByte})
	if cerr := h.watch.Close(); err == nil {
		err = cerr
	}
	return err
}

// Detach tells the VMM to outlive its creator (DetachByte) and closes the
// creator's end of the parent-watch pipe. The VM then runs until its guest
// stops or the VMM is signalled.
func (h *Handle) Detach() error {
	_, err := h.watch.Write([]byte{DetachByte})
	if cerr := h.watch.Close(); err == nil {
		err = cerr
	}
	return err
}

func exitCode(st *os.ProcessState) int {
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}
