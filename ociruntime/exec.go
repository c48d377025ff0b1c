package ociruntime

import (
	"github.com/msb-dev/msb/ociruntime/relayio"

	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/network"
	"github.com/msb-dev/msb/protocol"
)

// ExecOptions are runc exec's flags.
type ExecOptions struct {
	// Process is a JSON file with the whole process; else the container's
	// process with Args, Env, Cwd, User and Tty applied.
	Process       string
	Args          []string
	Env           []string
	Cwd, User     string
	Tty           bool
	Detach        bool
	PidFile       string
	ConsoleSocket string
}

// An exec's pid, as runc's callers see it, is a host process that relays
// the guest process's stdio and exits with its status: with --detach a
// relay process (`msb-runtime exec-relay`, in the container's network
// namespace and its own session), else msb-runtime exec itself.

// relayPlan is what exec hands its relay process on fd 3.
type relayPlan struct {
	Root    string         `json:"root"`
	ID      string         `json:"id"`
	ExecID  string         `json:"execId"`
	Process *specs.Process `json:"process"`
	Tty     bool           `json:"tty"` // fd 0 is a pty slave to hold
	// Tokens name the stdio streams of a pod member (member-relay), whose
	// task create makes after the relay has opened them.
	// Socket is its owner's agent socket.
	Tokens [3]string `json:"tokens,omitzero"`
	Socket string    `json:"socket,omitempty"`
	// View is the member's rootfs, the relay's root for clients (ADR 027).
	View string `json:"view,omitempty"`
}

// relayStatus is the relay's one line on fd 4: its pid once the process
// runs in the guest, or why it does not.
type relayStatus struct {
	Pid   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// Exec is `msb-runtime exec`. Without Detach it returns the process's
// exit status.
func Exec(ctx context.Context, o Options, id string, eo ExecOptions, stdio [3]*os.File) (int, error) {
	c, err := load(o, id)
	if err != nil {
		return 1, err
	}
	if st := c.status(ctx); st != statusRunning {
		return 1, fmt.Errorf("cannot exec in a %s container", st)
	}
	ps, err := execProcess(c, eo)
	if err != nil {
		return 1, err
	}
	plan := relayPlan{Root: o.Root, ID: id, ExecID: newExecID(), Process: ps, Tty: ps.Terminal}
	files := stdio[:]
	if ps.Terminal {
		if eo.ConsoleSocket == "" {
			if eo.Detach {
				return 1, errors.New("--tty with --detach needs --console-socket to receive the pty master (as with runc exec)")
			}
			return execOwnTerminal(ctx, c, plan, stdio)
		}
		slave, err := relayio.HostPty(eo.ConsoleSocket, ps.ConsoleSize)
		if err != nil {
			return 1, err
		}
		defer slave.Close()
		files = []*os.File{slave, slave, slave}
	}
	if eo.Detach {
		pid, err := startRelay(o, c, plan, files)
		if err != nil {
			return 1, err
		}
		if eo.PidFile != "" {
			return 0, writePidFile(eo.PidFile, pid)
		}
		return 0, nil
	}
	if eo.PidFile != "" {
		if err := writePidFile(eo.PidFile, os.Getpid()); err != nil {
			return 1, err
		}
	}
	fg := relayio.Stdio{In: files[0], Out: files[1], Err: files[2]}
	if ps.Terminal {
		fg.Err = nil // the pty carries both
	}
	return relay(ctx, c, plan, fg, func(taskapi, error) {})
}

// execProcess is the process to run: --process, or the container's own
// process (from the bundle) with the flags applied, as runc does.
func execProcess(c *container, eo ExecOptions) (*specs.Process, error) {
	var ps specs.Process
	if eo.Process != "" {
		b, err := os.ReadFile(eo.Process)
		if err != nil {
			return nil, fmt.Errorf("--process: %w", err)
		}
		if err := json.Unmarshal(b, &ps); err != nil {
			return nil, fmt.Errorf("--process %s: %w", eo.Process, err)
		}
	} else {
		spec, err := launch.LoadSpec(c.rec.Bundle)
		if err != nil {
			return nil, fmt.Errorf("exec needs --process or the container's bundle: %w", err)
		}
		ps = *spec.Process
		ps.Args = eo.Args
		ps.Terminal = eo.Tty
		ps.Env = append(ps.Env, eo.Env...)
		if eo.Cwd != "" {
			ps.Cwd = eo.Cwd
		}
		if eo.User != "" {
			uid, gid, err := parseUser(eo.User)
			if err != nil {
				return nil, err
			}
			ps.User = specs.User{UID: uid, GID: gid}
		}
	}
	if len(ps.Args) == 0 {
		return nil, errors.New("exec: no command: give it after the container id or in --process args")
	}
	return &ps, nil
}

// parseUser reads --user uid[:gid] (numbers: names would need the guest's
// /etc/passwd).
func parseUser(s string) (uint32, uint32, error) {
	u, g, _ := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("--user %q: want uid[:gid] as numbers", s)
	}
	gid := uint64(0)
	if g != "" {
		if gid, err = strconv.ParseUint(g, 10, 32); err != nil {
			return 0, 0, fmt.Errorf("--user %q: want uid[:gid] as numbers", s)
		}
	}
	return uint32(uid), uint32(gid), nil
}

func newExecID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "exec-" + hex.EncodeToString(b)
}

// relay runs plan's process in the guest with stdio and returns its exit
// status; started is told once it runs, with the task client it runs
// through (or why it does not, with nil).
func relay(ctx context.Context, c *container, plan relayPlan, stdio relayio.Stdio, started func(taskapi, error)) (int, error) {
	code, err := func() (int, error) {
		tokens := relayio.NewTokens()
		streams, err := relayio.Open(ctx, c.rec.AgentSocket, tokens, stdio, nil)
		if err != nil {
			return 1, err
		}
		defer streams.Close()
		a, err := c.dial(ctx)
		if err != nil {
			return 1, err
		}
		defer a.Close()
		spec, err := json.Marshal(plan.Process)
		if err != nil {
			return 1, err
		}
		if _, err := a.task.Exec(ctx, &task.ExecProcessRequest{
			ID: plan.ID, ExecID: plan.ExecID, Terminal: plan.Process.Terminal,
			Spec:  &anypb.Any{TypeUrl: protocol.ProcessSpecTypeURL, Value: spec},
			Stdin: protocol.StreamURI(tokens[0]), Stdout: protocol.StreamURI(tokens[1]), Stderr: protocol.StreamURI(tokens[2]),
		}); err != nil {
			return 1, fmt.Errorf("exec in the guest: %w", errgrpc.ToNative(err))
		}
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_, _ = a.task.Delete(dctx, &task.DeleteRequest{ID: plan.ID, ExecID: plan.ExecID})
		}()
		if _, err := a.task.Start(ctx, &task.StartRequest{ID: plan.ID, ExecID: plan.ExecID}); err != nil {
			return 1, fmt.Errorf("start exec in the guest: %w", errgrpc.ToNative(err))
		}
		started(a.task, nil)
		started = func(taskapi, error) {}
		if plan.Tty {
			if f, ok := stdio.In.(*os.File); ok {
				relayio.HoldPty(ctx, f, a.task, plan.ID, plan.ExecID)
			}
		}
		w, err := a.task.Wait(ctx, &task.WaitRequest{ID: plan.ID, ExecID: plan.ExecID})
		if err != nil {
			// The VM went under the process.
			return 137, fmt.Errorf("wait for exec: %w", err)
		}
		streams.Wait()
		return int(w.ExitStatus), nil
	}()
	started(nil, err)
	return code, err
}

// execOwnTerminal runs an exec with a terminal in the foreground on
// msb-runtime's own terminal, as runc exec -t does.
func execOwnTerminal(ctx context.Context, c *container, plan relayPlan, stdio [3]*os.File) (int, error) {
	term, err := relayio.OpenTerminal(stdio[0])
	if err != nil {
		return 1, err
	}
	plan.Process.ConsoleSize = term.Box()
	plan.Tty = false // the terminal is the caller's: raw mode and resizes below
	if err := term.Raw(); err != nil {
		return 1, fmt.Errorf("terminal raw mode: %w", err)
	}
	defer term.Restore()
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	return relay(ctx, c, plan, relayio.Stdio{In: stdio[0], Out: stdio[1]}, func(tc taskapi, err error) {
		if err == nil {
			stop = term.ForwardResize(ctx, tc, plan.ID, plan.ExecID)
		}
	})
}

// startRelay starts the detached relay process for plan and returns its
// pid once the process runs in the guest.
func startRelay(o Options, c *container, plan relayPlan, stdio []*os.File) (int, error) {
	ns := c.rec.NetNS
	if ns == "" {
		ns = fmt.Sprintf("/proc/%d/ns/net", c.rec.Pid)
	}
	pid, cmd, err := spawnRelay(o, c, ns, "exec-relay", plan, stdio, nil)
	if err != nil {
		return 0, err
	}
	// Not waited for: the caller's reaper (conmon, containerd's shim)
	// gets its exit status once this process has gone.
	_ = cmd.Process.Release()
	return pid, nil
}

// spawnRelay starts the hidden relay command in network namespace netns
// and its own session, with stdio, the plan on fd 3, its status on fd 4
// and extra (if any) as fd 5, and returns its pid once it reports ready.
func spawnRelay(o Options, c *container, netns, command string, plan relayPlan, stdio []*os.File, extra *os.File) (int, *exec.Cmd, error) {
	b, err := json.Marshal(plan)
	if err != nil {
		return 0, nil, err
	}
	cfg, err := os.CreateTemp(c.dir, ".relay-*.json")
	if err != nil {
		return 0, nil, err
	}
	os.Remove(cfg.Name())
	defer cfg.Close()
	if _, err := cfg.Write(b); err != nil {
		return 0, nil, err
	}
	if _, err := cfg.Seek(0, 0); err != nil {
		return 0, nil, err
	}
	sr, sw, err := os.Pipe()
	if err != nil {
		return 0, nil, err
	}
	defer sr.Close()
	args := []string{"--root", o.Root}
	if o.Log != "" {
		args = append(args, "--log", o.Log, "--log-format", o.LogFormat)
	}
	cmd := exec.Command(o.Self, append(args, command)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
	cmd.ExtraFiles = []*os.File{cfg, sw}
	if extra != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, extra)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = network.InNS(netns, cmd.Start)
	sw.Close()
	if err != nil {
		return 0, nil, fmt.Errorf("start %s: %w", command, err)
	}
	line, rerr := bufio.NewReader(io.LimitReader(sr, 64<<10)).ReadString('\n')
	var st relayStatus
	if rerr != nil || json.Unmarshal([]byte(line), &st) != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 0, nil, fmt.Errorf("%s died before it was ready (%v)", command, rerr)
	}
	if st.Error != "" {
		_ = cmd.Wait()
		return 0, nil, errors.New(st.Error)
	}
	return st.Pid, cmd, nil
}

// readRelayPlan reads a relay's plan from fd 3; report writes its one
// status line on fd 4 (its pid, or err), once. A bad plan is reported.
func readRelayPlan() (relayPlan, func(error), error) {
	status := os.NewFile(4, "status")
	report := func(err error) {
		st := relayStatus{Pid: os.Getpid()}
		if err != nil {
			st = relayStatus{Error: err.Error()}
		}
		b, _ := json.Marshal(st)
		_, _ = status.Write(append(b, '\n'))
		status.Close()
	}
	var plan relayPlan
	b, err := io.ReadAll(io.LimitReader(os.NewFile(3, "plan"), 16<<20))
	if err == nil {
		err = json.Unmarshal(b, &plan)
	}
	if err != nil {
		err = fmt.Errorf("relay plan: %w", err)
		report(err)
	}
	return plan, report, err
}

// ExecRelay is the hidden `exec-relay` command: it reads its plan from fd 3,
// reports on fd 4, relays stdio (fds 0–2) and returns the exit status.
func ExecRelay(ctx context.Context) int {
	// A reader that went away is an EPIPE for the copy, not this
	// process's death: the guest process still gets its exit reaped.
	signal.Ignore(syscall.SIGPIPE)
	plan, report, err := readRelayPlan()
	if err != nil {
		return 1
	}
	self, _ := os.Executable()
	c, err := load(Options{Root: plan.Root, Self: self}, plan.ID)
	if err != nil {
		report(err)
		return 1
	}
	stdio := relayio.Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}
	if plan.Tty {
		stdio.Err = nil
	}
	code, err := relay(ctx, c, plan, stdio, func(_ taskapi, err error) { report(err) })
	if err != nil {
		log.G(ctx).WithError(err).Warnf("exec %s in %s", plan.ExecID, plan.ID)
	}
	return code
}
