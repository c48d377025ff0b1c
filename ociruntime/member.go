package ociruntime

import (
	"github.com/msb-dev/msb/ociruntime/relayio"
	"github.com/msb-dev/msb/specconv"

	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/hooks"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/view"
	"github.com/msb-dev/msb/vmm"
)

// A pod member (ADR 024) is a container that joined another msb
// container's running VM, as a CRI pod's containers join their sandbox's
// (ADR 007): its rootfs and volumes are bound below the owner's pod dir
// (launch.PodBinds, the shim's mechanism), the guest creates it in the
// owner's namespaces of the types its spec joins, and its pid is a host
// process of its own (member-relay, in the owner's network namespace)
// that holds its stdio and exits with its status.

// guestCreateTimeout bounds a member's Prepare and Create in the running
// guest (no boot to wait for: runc create's time, with room for TCG).
const guestCreateTimeout = time.Minute

// createMember creates container id from bundle b in owner's VM, joining
// the owner's guest namespaces of the types in joined. On error nothing
// is left behind.
func createMember(ctx context.Context, o Options, id string, b bundleSpec, owner *container, joined []specs.LinuxNamespaceType, co CreateOptions, stdio [3]*os.File) (retErr error) {
	if err := launch.CheckMember(b.spec, owner.rec.ID, owner.rec.Spec.Annotations, owner.rec.VM); err != nil {
		return err
	}
	stateDir, err := makeStateDir(o, id)
	if err != nil {
		return err
	}
	c := &container{dir: stateDir, rec: record{
		ID: id, Bundle: b.dir, Rootfs: b.rootfs, Created: time.Now().UTC(),
		Spec:     specs.Spec{Version: b.spec.Version, Hooks: b.spec.Hooks, Annotations: b.spec.Annotations},
		VMRecord: launch.VMRecord{AgentSocket: owner.rec.AgentSocket}, NetNS: owner.rec.NetNS, VM: owner.rec.VM, Owner: owner.rec.ID,
		MemoryLimit: specconv.MemoryLimit(b.spec),
	}}
	var mem *launch.Member
	defer func() {
		if retErr != nil {
			c.removeMember(ctx, o)
			if err := mem.Release(); err != nil {
				log.G(ctx).WithError(err).Warn("release staged files")
			}
		}
	}()
	a, err := owner.dial(ctx)
	if err != nil {
		return err
	}
	defer a.Close()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := a.task.State(sctx, &task.StateRequest{ID: owner.rec.ID})
	cancel()
	if err != nil {
		return fmt.Errorf("container %q, whose VM %q joins: %w", owner.rec.ID, id, errgrpc.ToNative(err))
	}
	if st.Pid == 0 {
		return fmt.Errorf("container %q, whose VM %q joins, has no process in its VM", owner.rec.ID, id)
	}
	ns := launch.GuestNamespaces(joined, st.Pid)
	mem, err = launch.PrepareMember(launch.MemberRequest{
		ID: id, Spec: b.spec, Bundle: b.dir, Rootfs: b.rootfs,
		StageDir: launch.StageDir(stateDir), GuestDir: "/run/msb/c/" + id,
		SandboxNamespaces: ns, Config: o.Config,
	})
	if err != nil {
		return err
	}
	for _, sh := range mem.Shares {
		c.rec.Tags = append(c.rec.Tags, sh.Tag)
	}
	if err := c.expose(o, owner, mem); err != nil {
		return err
	}
	files, done, err := createStdio(co, mem.GuestSpec.Process, stdio)
	if err != nil {
		return err
	}
	defer done()
	tokens := relayio.NewTokens()
	terminal := mem.GuestSpec.Process.Terminal
	p, err := startMemberRelay(o, c, owner, relayPlan{Root: o.Root, ID: id, Tokens: tokens, Socket: owner.rec.AgentSocket, Tty: terminal, View: b.rootfs}, files)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			p.abort()
		}
	}()
	if err := hooks.Create(ctx, b.spec, hooks.State(b.spec, id, b.dir, specs.StateCreating, p.pid)); err != nil {
		return err
	}
	// The guest is hostile: its answers are waited for a bounded time.
	gctx, cancel := context.WithTimeout(ctx, guestCreateTimeout)
	defer cancel()
	if err := a.agent.Prepare(gctx, id, mem.Env); err != nil {
		return fmt.Errorf("prepare %q in the VM of %q: %w", id, owner.rec.ID, errgrpc.ToNative(err))
	}
	if err := createTask(gctx, a.task, id, mem.GuestSpec, tokens, terminal); err != nil {
		return err
	}
	start, ok := vmm.ProcStart(p.pid)
	if !ok {
		return fmt.Errorf("pid process %d of %q exited during create", p.pid, id)
	}
	c.rec.Pid, c.rec.PidStart = p.pid, start
	if err := c.save(); err != nil {
		return err
	}
	if co.PidFile != "" {
		if err := writePidFile(co.PidFile, p.pid); err != nil {
			return err
		}
	}
	return p.detach()
}

// expose binds the member's shares below the owner's pod dir, in its
// jailed qemu's mount namespace. Propagated binds need a process that
// keeps them in step with the host (the shim's Mirror): refused here.
func (c *container) expose(o Options, owner *container, mem *launch.Member) error {
	pb, err := launch.OpenPodBinds(podDir(o.Root, owner.rec.ID), owner.rec.Pid)
	if err != nil {
		return fmt.Errorf("VM of %q: %w", owner.rec.ID, err)
	}
	defer pb.Close()
	mirrors, err := pb.Expose(c.rec.ID, mem.Shares, "", filepath.Join(c.dir, "shifted"), log.L.WithField("container", c.rec.ID).Warnf)
	if err != nil {
		return err
	}
	if len(mirrors) > 0 {
		for _, m := range mirrors {
			m.Stop()
		}
		return errors.New("mounts: a propagated bind (shared, slave) into a container that joins another's VM is not supported by msb-runtime: use private propagation")
	}
	return nil
}

// removeMember undoes a member: its task in the owner's guest (killed
// if it runs), its binds below the owner's pod dir, and its state dir.
// The owner's VM keeps running.
func (c *container) removeMember(ctx context.Context, o Options) {
	dir := podDir(o.Root, c.rec.Owner)
	var pb *launch.PodBinds
	if owner, err := load(o, c.rec.Owner); err == nil && owner.vmmAlive() {
		if a, err := owner.dial(ctx); err == nil {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := a.task.Delete(dctx, &task.DeleteRequest{ID: c.rec.ID}); err != nil {
				_, _ = a.task.Kill(dctx, &task.KillRequest{ID: c.rec.ID, Signal: uint32(syscall.SIGKILL), All: true})
				_, err = a.task.Delete(dctx, &task.DeleteRequest{ID: c.rec.ID})
				log.G(ctx).WithError(err).Debugf("delete %q in the guest", c.rec.ID)
			}
			cancel()
			a.Close()
		}
		if pb, err = launch.OpenPodBinds(dir, owner.rec.Pid); err != nil {
			log.G(ctx).WithError(err).Debugf("VM of %q", c.rec.ID)
		}
	}
	if pb == nil {
		// The VM is gone, and its jail's mounts with it.
		pb = launch.HostPodBinds(dir)
	}
	if _, err := os.Lstat(dir); err == nil {
		if err := pb.Withdraw(c.rec.ID, c.rec.Tags, log.G(ctx).Warnf); err != nil {
			log.G(ctx).WithError(err).Errorf("pod member %s: keeping it for the VM's teardown", c.rec.ID)
		}
	}
	pb.Close()
	if err := mounts.RemoveAllUnmounted(c.dir); err != nil {
		log.G(ctx).WithError(err).Warnf("remove state of %q", c.rec.ID)
	}
}

// deleteMember stops (with force, or when only created) and removes a
// member; a running one is refused without force, as Delete refuses.
func (c *container) deleteMember(ctx context.Context, o Options, force bool) error {
	if c.vmmAlive() {
		switch st := c.status(ctx); {
		case st == statusStopped:
		case st == statusCreated || force:
			if a, err := c.dial(ctx); err == nil {
				kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, _ = a.task.Kill(kctx, &task.KillRequest{ID: c.rec.ID, Signal: uint32(syscall.SIGKILL), All: true})
				cancel()
				a.Close()
			}
		default:
			return fmt.Errorf("cannot delete container %s that is not stopped: %s (use --force)", c.rec.ID, st)
		}
		// Its pid process exits once the task has; a guest that does not
		// answer leaves it to SIGKILL.
		if p, err := vmm.OpenProc(c.rec.Pid, c.rec.PidStart); p != nil && err == nil {
			if !p.Wait(10 * time.Second) {
				_ = p.Signal(syscall.SIGKILL)
				p.Wait(vmm.StopStep)
			}
			p.Close()
		}
	}
	c.removeMember(ctx, o)
	return nil
}

// memberRelay is a member's pid process while create runs.
type memberRelay struct {
	pid    int
	proc   *os.Process
	detach func() error
	abort  func()
}

// startMemberRelay starts the member's pid process in the owner's
// network namespace with stdio; it opens the member's stdio streams to
// the guest and reports before create makes the task that pairs with
// them.
func startMemberRelay(o Options, c, owner *container, plan relayPlan, stdio []*os.File) (*memberRelay, error) {
	if len(stdio) == 1 {
		stdio = []*os.File{stdio[0], stdio[0], stdio[0]}
	}
	dr, dw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer dr.Close()
	netns := "/proc/" + strconv.Itoa(owner.rec.Pid) + "/ns/net"
	pid, cmd, err := spawnRelay(o, c, netns, "member-relay", plan, stdio, dr)
	if err != nil {
		dw.Close()
		return nil, err
	}
	return &memberRelay{pid: pid, proc: cmd.Process,
		detach: func() error {
			_, err := dw.Write([]byte{1})
			dw.Close()
			_ = cmd.Process.Release()
			if err != nil {
				return fmt.Errorf("hand the container over to its pid process: %w", err)
			}
			return nil
		},
		abort: func() {
			dw.Close() // it exits on EOF
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}}, nil
}

// MemberRelay is the hidden `member-relay` command, a member's pid: it
// reads its plan from fd 3, opens the member's stdio streams (fds 0–2, or
// a pty slave on fd 0), reports on fd 4, and once create hands the
// container over (a byte on fd 5; EOF: create failed) waits for the
// container's exit and returns its status. SIGTERM and SIGINT stop the
// container (SIGKILL in the guest), as they stop a VM's VMM.
func MemberRelay(ctx context.Context) int {
	signal.Ignore(syscall.SIGPIPE)
	plan, report, err := readRelayPlan()
	if err != nil {
		return 1
	}
	// Its pid is the member's for clients: its main thread shows them the
	// member's rootfs (ADR 027); the relay works on other threads.
	return view.Run(plan.View, func() int { return relayMember(ctx, plan, report) })
}

func relayMember(ctx context.Context, plan relayPlan, report func(error)) int {
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("container", plan.ID))
	var stdio relayio.Stdio
	var tty *os.File
	if plan.Tty {
		tty = os.Stdin
		stdio = relayio.Stdio{In: tty, Out: tty}
	} else {
		// A SIGHUP (someone's kill -HUP) must not end the container by
		// default action; this process leads its own session.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
		stdio = relayio.Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}
	}
	streams, err := relayio.Open(ctx, plan.Socket, plan.Tokens, stdio, nil)
	report(err)
	if err != nil {
		return 1
	}
	var b [1]byte
	if n, _ := os.NewFile(5, "detach").Read(b[:]); n != 1 {
		return 1 // create failed and undoes the rest
	}
	cl, err := vmm.DialTTRPC(ctx, plan.Socket)
	if err != nil {
		log.G(ctx).WithError(err).Error("agent")
		return 137
	}
	defer cl.Close()
	tc := task.NewTTRPCTaskClient(cl)
	if tty != nil {
		relayio.HoldPty(ctx, tty, tc, plan.ID, "")
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for range sig {
			kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, _ = tc.Kill(kctx, &task.KillRequest{ID: plan.ID, Signal: uint32(syscall.SIGKILL), All: true})
			cancel()
		}
	}()
	w, err := tc.Wait(ctx, &task.WaitRequest{ID: plan.ID})
	if err != nil {
		// The VM went under the container.
		log.G(ctx).WithError(err).Warn("wait for the container")
		return 137
	}
	streams.Wait()
	return int(w.ExitStatus)
}
