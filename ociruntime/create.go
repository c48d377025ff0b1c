package ociruntime

import (
	"github.com/msb-dev/msb/ociruntime/relayio"

	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/hooks"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/specconv"
	"github.com/msb-dev/msb/vmm"
)

// CreateOptions are runc create's flags that mean something here.
type CreateOptions struct {
	Bundle        string
	PidFile       string
	ConsoleSocket string
	// PreserveFDs must be 0: host fds cannot be passed into a VM.
	PreserveFDs int
}

// Create is `msb-runtime create`: it boots the container's VM, creates the
// container in the guest and leaves the VMM process running as the
// container's pid, holding stdio (the caller's fds 0–2, or a pty whose
// master goes to the console socket). That process exits with the
// container's exit status. Later commands find the container under
// o.Root. On error nothing is left behind.
func Create(ctx context.Context, o Options, id string, co CreateOptions, stdio [3]*os.File) (retErr error) {
	if co.PreserveFDs > 0 {
		return errors.New("--preserve-fds: host file descriptors cannot be passed into the container's VM: drop the option (socket activation does not work with msb)")
	}
	if err := checkID(id); err != nil {
		return err
	}
	b, err := readBundle(co.Bundle)
	if err != nil {
		return err
	}
	owner, joined, err := findOwner(ctx, o, b.spec)
	if err != nil {
		return err
	}
	if owner != nil {
		return createMember(ctx, o, id, b, owner, joined, co, stdio)
	}
	sb, err := prepare(o, b, id, true)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			sb.destroy()
		}
	}()
	terminal := sb.prep.GuestSpec.Process.Terminal
	files, done, err := createStdio(co, sb.prep.GuestSpec.Process, stdio)
	if err != nil {
		return err
	}
	defer done()
	tokens := relayio.NewTokens()
	sb.prep.Launch.Container = &vmm.ContainerMode{ID: id, Tokens: tokens, Terminal: terminal,
		Unstage: []string{launch.StageDir(sb.stateDir)}}
	h, err := sb.prep.Spawn(o.Self, files...)
	if err != nil {
		return err
	}
	if err := createInVM(ctx, sb, h, tokens, terminal); err != nil {
		return sb.abandon(h, err)
	}
	vr, err := launch.RecordVM(sb.prep.Launch, h)
	if err != nil {
		return sb.abandon(h, err)
	}
	c := &container{dir: sb.stateDir, rec: record{
		ID: id, Bundle: sb.bundle, Rootfs: sb.prep.GuestSpec.Root.Path, Created: time.Now().UTC(),
		Spec:     specs.Spec{Version: sb.spec.Version, Hooks: sb.spec.Hooks, Annotations: sb.spec.Annotations},
		VMRecord: vr,
		NetNS:    sb.prep.Launch.NetNS,
		NICs:     sb.prep.Launch.NICs,
		VM: specconv.VMSize{VCPUs: sb.prep.Launch.VCPUs, MemoryMiB: sb.prep.Launch.MemoryMiB, OverheadMiB: o.Config.OverheadMiB,
			MaxMemoryMiB: sb.prep.Launch.MaxMemoryMiB},
		MemoryLimit: specconv.MemoryLimit(sb.spec),
		Pod:         true,
	}}
	if rootfs, err := rootfsPath(sb.bundle, sb.spec); err == nil {
		c.rec.Rootfs = rootfs
	}
	err = c.save()
	if err == nil && co.PidFile != "" {
		err = writePidFile(co.PidFile, h.Pid)
	}
	if err == nil {
		err = h.Detach()
	}
	if err != nil {
		_ = h.Release()
		_, _ = h.Wait()
		return err
	}
	return nil
}

// createStdio is what the container's pid process holds as its stdio:
// the caller's fds 0–2, or with a terminal the slave of a host pty whose
// master went to --console-socket. done closes this process's copy.
func createStdio(co CreateOptions, ps *specs.Process, stdio [3]*os.File) ([]*os.File, func(), error) {
	if !ps.Terminal {
		return stdio[:], func() {}, nil
	}
	if co.ConsoleSocket == "" {
		return nil, nil, errors.New("process.terminal is true: --console-socket is required to receive the pty master (as with runc create)")
	}
	slave, err := relayio.HostPty(co.ConsoleSocket, ps.ConsoleSize)
	if err != nil {
		return nil, nil, err
	}
	return []*os.File{slave}, func() { slave.Close() }, nil
}

// createInVM runs the create hooks while the VM boots, then creates the
// container in the guest with the stdio streams the VMM holds.
func createInVM(ctx context.Context, sb *launchVM, h *vmm.Handle, tokens [3]string, terminal bool) error {
	if err := hooks.Create(ctx, sb.spec, hooks.State(sb.spec, sb.id, sb.bundle, specs.StateCreating, h.Pid)); err != nil {
		return err
	}
	a, err := dialReady(ctx, sb, h)
	if err != nil {
		return err
	}
	defer a.Close()
	cctx, cancel := sb.callContext(ctx)
	defer cancel()
	return createTask(cctx, a.task, sb.id, sb.prep.GuestSpec, tokens, terminal)
}

// dialReady connects to the agent of a booting VM and waits until it
// answers (launch.WaitAgent).
func dialReady(ctx context.Context, sb *launchVM, h *vmm.Handle) (*agentConn, error) {
	cl, err := launch.WaitAgent(ctx, sb.prep.Launch, h)
	if err != nil {
		return nil, err
	}
	return &agentConn{client: cl, task: task.NewTTRPCTaskClient(cl), agent: protocol.NewAgentClient(cl)}, nil
}

// writePidFile writes pid as runc does: the number alone, into a temp
// file created with O_EXCL in path's directory (a symlink planted at a
// temp name is never followed), renamed over path (a symlink there is
// replaced, not followed).
func writePidFile(path string, pid int) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("--pid-file: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("--pid-file: %w", err)
	}
	tmp := f.Name()
	_, err = f.WriteString(strconv.Itoa(pid))
	if err == nil {
		err = f.Chmod(0o644) // runc's 0666 less the usual umask
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--pid-file %s: %w", path, err)
	}
	return nil
}

// Start is `msb-runtime start`: it wires the network the caller set up in
// the container's namespace since create to the VM, starts the container
// in the guest and runs the poststart hooks.
func Start(ctx context.Context, o Options, id string) error {
	c, err := load(o, id)
	if err != nil {
		return err
	}
	switch st := c.status(ctx); st {
	case statusCreated:
	case statusStopped:
		return fmt.Errorf("cannot start a container that has stopped")
	default:
		return fmt.Errorf("cannot start an already %s container", st)
	}
	a, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer a.Close()
	// A member's network is its owner's VM's (ADR 024).
	if c.rec.Owner == "" {
		lc := &vmm.LaunchConfig{NetNS: c.rec.NetNS, NICs: c.rec.NICs, RuntimeDir: c.dir}
		n, err := launch.OpenNet(lc, c.rec.Pid)
		if err != nil {
			return err
		}
		// The VMM undoes the wiring when it ends: here only the namespace
		// fd is let go.
		defer n.Release()
		if err := n.Attach(ctx, a.agent, id); err != nil {
			return err
		}
	}
	if _, err := a.task.Start(ctx, &task.StartRequest{ID: id}); err != nil {
		return fmt.Errorf("start container in the guest: %w", err)
	}
	c.rec.Started = true
	if err := c.save(); err != nil {
		log.G(ctx).WithError(err).Warn("record start")
	}
	st := hooks.State(&c.rec.Spec, id, c.rec.Bundle, specs.StateRunning, c.rec.Pid)
	if err := hooks.Run(ctx, &c.rec.Spec, hooks.Poststart, st); err != nil {
		log.G(ctx).WithError(err).Warn("poststart")
	}
	return nil
}
