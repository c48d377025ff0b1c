package ociruntime

import (
	"github.com/msb-dev/msb/ociruntime/phases"

	"github.com/msb-dev/msb/ociruntime/relayio"

	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/hooks"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/vmm"
)

// Run is `msb-runtime run`: create, start and wait for the container in its
// own VM, wiring stdio through, and return the container's exit code. The VM
// is gone and the state removed when Run returns.
func Run(ctx context.Context, o Options, bundle, id string, stdio relayio.Stdio) (int, error) {
	ph := phases.New()
	b, err := readBundle(bundle)
	if err != nil {
		return 1, err
	}
	// Nothing can join a run's VM: it is in no record.
	sb, err := prepare(o, b, id, false)
	if err != nil {
		return 1, err
	}
	defer sb.destroy()
	var term *relayio.Terminal
	if sb.prep.GuestSpec.Process.Terminal {
		if term, err = relayio.OpenTerminal(stdio.In); err != nil {
			return 1, err
		}
		sb.prep.GuestSpec.Process.ConsoleSize = term.Box()
	}
	ph.Mark("spawn")
	h, err := sb.prep.Spawn(o.Self)
	if err != nil {
		return 1, err
	}
	ph.Mark("startup")
	code, err := func() (int, error) {
		if sb.net, err = launch.OpenNet(sb.prep.Launch, h.Pid); err != nil {
			return 0, err
		}
		// The VM boots while the create hooks run, as in the shim.
		if err := hooks.Create(ctx, sb.spec, hooks.State(sb.spec, id, sb.bundle, specs.StateCreating, h.Pid)); err != nil {
			return 0, err
		}
		return drive(ctx, sb, h, stdio, term, ph)
	}()
	if err != nil {
		// Whatever failed, the VM must not outlive this call.
		code := 1
		if ee := (exitError{}); errors.As(err, &ee) {
			code = ee.code
		}
		return code, sb.abandon(h, err)
	}
	ph.Mark("exit")
	ph.Write(log.G(ctx))
	sb.destroy()
	st := hooks.State(sb.spec, id, sb.bundle, specs.StateStopped, h.Pid)
	if err := hooks.Run(ctx, sb.spec, hooks.Poststop, st); err != nil {
		log.G(ctx).WithError(err).Warn("poststop")
	}
	return code, nil
}

func drive(ctx context.Context, sb *launchVM, h *vmm.Handle, stdio relayio.Stdio, term *relayio.Terminal, ph *phases.Phases) (int, error) {
	a, err := dialReady(ctx, sb, h)
	if err != nil {
		return 0, err
	}
	defer a.Close()
	ph.Mark("ready")
	bootCtx, cancel := sb.callContext(ctx)
	defer cancel()

	tokens := relayio.NewTokens()
	streams, err := relayio.Open(bootCtx, sb.prep.Launch.AgentSocket, tokens, stdio, func() { ph.Mark("first-output") })
	if err != nil {
		return 0, err
	}
	defer streams.Close()
	tc, agent := a.task, a.agent
	if err := createTask(ctx, tc, sb.id, sb.prep.GuestSpec, tokens, term != nil); err != nil {
		return 0, err
	}
	if term != nil {
		if err := term.Raw(); err != nil {
			return 0, fmt.Errorf("terminal raw mode: %w", err)
		}
		defer term.Restore()
		defer term.ForwardResize(ctx, tc, sb.id, "")()
	}
	if err := sb.net.Attach(ctx, agent, sb.id); err != nil {
		return 0, err
	}
	if _, err := tc.Start(ctx, &task.StartRequest{ID: sb.id}); err != nil {
		return 0, fmt.Errorf("start container in the guest: %w", err)
	}
	st := hooks.State(sb.spec, sb.id, sb.bundle, specs.StateRunning, h.Pid)
	if err := hooks.Run(ctx, sb.spec, hooks.Poststart, st); err != nil {
		log.G(ctx).WithError(err).Warn("poststart")
	}
	stopSignals := forwardSignals(ctx, tc, sb.id)
	defer stopSignals()

	w, err := tc.Wait(ctx, &task.WaitRequest{ID: sb.id})
	if err != nil {
		// The VM died under the container (the channel breaks a moment
		// before the VMM exits): say why, with the shim's exit rule.
		select {
		case <-h.Done():
		case <-time.After(5 * time.Second):
			return 0, fmt.Errorf("wait for container: %w", err)
		}
		vmCode, werr := h.Wait()
		code, cause := launch.VMEnded(sb.prep.Launch.RuntimeDir, vmCode, werr)
		streams.Wait()
		return code, exitError{code, fmt.Errorf("VM ended: %s: exit status %d", cause, code)}
	}
	// The agent closes output streams before it reports the exit; wait for
	// our side of the copy too, so every byte is written before we return.
	streams.Wait()
	// Not deleted in the guest: the power-off stops what is left, and
	// runc's state goes with the VM (a runc delete is a process start).
	code := int(w.ExitStatus)
	if err := h.Stop(func() error {
		shCtx, cancel := context.WithTimeout(ctx, vmm.StopStep)
		defer cancel()
		err := agent.Shutdown(shCtx, int32(code))
		if err != nil {
			log.G(ctx).WithError(err).Warn("guest shutdown")
		}
		return err
	}); err != nil {
		return 0, err
	}
	vmCode, err := h.Wait()
	if err != nil {
		return 0, err
	}
	if vmCode != code {
		log.G(ctx).Warnf("VMM exited %d, container %d", vmCode, code)
	}
	return code, nil
}

// forwardSignals passes the signals runc run forwards on to the container.
func forwardSignals(ctx context.Context, tc task.TTRPCTaskService, id string) func() {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-ch:
				sig := s.(syscall.Signal)
				if _, err := tc.Kill(ctx, &task.KillRequest{ID: id, Signal: uint32(sig)}); err != nil {
					log.G(ctx).WithError(err).Warnf("forward %s", unix.SignalName(sig))
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}
