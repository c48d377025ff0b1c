package vmmcmd

import (
	"github.com/msb-dev/msb/ociruntime/relayio"

	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"

	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
)

// superviseContainer runs in a container-mode VMM process (msb-runtime
// create) once its agent is up: it copies the container's stdio between
// the fds the caller gave create and the guest, and once create has
// handed the VM over (detached), waits for the container's exit, lets its
// output drain, and shuts the guest down with the exit status, which
// becomes the VMM process's own: runc's callers reap the container's pid
// for the status. A VM that dies first ends the VMM by itself
// (vmm.ExitGuestLost / vmm.ExitKilled).
func superviseContainer(cfg *vmm.LaunchConfig, detached <-chan struct{}) {
	m := cfg.Container
	ctx := log.WithLogger(context.Background(), log.L.WithField("container", m.ID))
	var stdio relayio.Stdio
	var tty *os.File
	if m.Terminal {
		tty = os.NewFile(vmm.ContainerStdioFD, "pty")
		stdio = relayio.Stdio{In: tty, Out: tty}
	} else {
		// No terminal: a SIGHUP (someone's kill -HUP) must not end the VM
		// by default action; the VMM leads its own session.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
		stdio = relayio.Stdio{
			In:  os.NewFile(vmm.ContainerStdioFD, "stdin"),
			Out: os.NewFile(vmm.ContainerStdioFD+1, "stdout"),
			Err: os.NewFile(vmm.ContainerStdioFD+2, "stderr"),
		}
	}
	streams, err := relayio.Open(ctx, cfg.AgentSocket, m.Tokens, stdio, nil)
	if err != nil {
		log.G(ctx).WithError(err).Error("container stdio")
		return
	}
	<-detached
	cl, err := vmm.DialTTRPC(ctx, cfg.AgentSocket)
	if err != nil {
		log.G(ctx).WithError(err).Error("agent")
		return
	}
	tc := task.NewTTRPCTaskClient(cl)
	if tty != nil {
		relayio.HoldPty(ctx, tty, tc, m.ID, "")
	}
	// This process is the container's long-lived one (ADR 017): it makes
	// networks connected after create reach the guest (ADR 029).
	net := watchNetwork(ctx, cfg, protocol.NewAgentClient(cl), m.ID)
	defer net.Release()
	w, err := tc.Wait(ctx, &task.WaitRequest{ID: m.ID})
	net.StopWatch()
	if err != nil {
		log.G(ctx).WithError(err).Warn("wait for the container (the VM is going)")
		return
	}
	streams.Wait()
	code := int32(w.ExitStatus)
	log.G(ctx).Infof("container exited %d: shutting the guest down", code)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := protocol.NewAgentClient(cl).Shutdown(sctx, code); err != nil {
		log.G(ctx).WithError(err).Warn("guest shutdown")
	}
}

// watchNetwork starts following the VM's network namespace (this
// process's) for container id (launch.Net.Watch); nil when it cannot,
// which is logged: the container runs on without later networks.
func watchNetwork(ctx context.Context, cfg *vmm.LaunchConfig, agent *protocol.AgentClient, id string) *launch.Net {
	n, err := launch.OpenNet(cfg, os.Getpid())
	if err == nil {
		if err = n.Watch(ctx, agent, id); err != nil {
			n.Release()
		}
	}
	if err != nil {
		log.G(ctx).WithError(err).Error("networks connected after create will not reach the guest")
		return nil
	}
	return n
}
