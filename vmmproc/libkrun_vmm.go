package vmmproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/msb-dev/msb/vmm"
	"github.com/msb-dev/msb/vmmproc/libkrun"
)

// krunVM is the VMM process driving libkrun. libkrun's krun_start_enter
// never returns: it runs the VM on the calling thread and calls exit()
// when the guest stops. So everything else (agent channel, boot, relay,
// parent watchdog, signals) runs in goroutines started before it, and the
// process ends either in libkrun's exit() (through atExit) or in k.exit.
type krunVM struct {
	*vm
	lib  *libkrun.Lib
	plan libkrun.Plan

	// code is the exit code the agent announced (WaitShutdown), or -1.
	code atomic.Int64
	// connected is set once the guest opened the agent channel.
	connected atomic.Bool
}

// runLibkrun configures libkrun, writes the startup line and enters the VM.
// It returns only when libkrun refuses the configuration.
func runLibkrun(v *vm, lib *libkrun.Lib, relayLn, chanLn *net.UnixListener, chanSock string, watch, startup *os.File) (int, error) {
	k := &krunVM{vm: v, lib: lib}
	k.code.Store(-1)
	plan, err := lib.Configure(v.cfg, chanSock, log.L.Warnf)
	if err != nil {
		return 1, err
	}
	k.plan = plan
	if err := libkrun.AtExit(k.atExit); err != nil {
		return 1, err
	}
	defer func() { _ = libkrun.AtExit(nil) }()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, shutdownSignals(v.cfg)...)
	if err := vmm.WriteStartupLine(startup); err != nil {
		return 1, fmt.Errorf("write startup line: %w", err)
	}
	startup.Close()
	go func() {
		// supervise returns only when the VM ended early (k.stop ends
		// the process itself).
		code, err := v.supervise(k, relayLn, chanLn, watch, sigs, time.Now())
		k.exit(code, "%v", err)
	}()

	// The VM runs on this thread until libkrun exits the process.
	runtime.LockOSThread()
	if err := lib.StartEnter(plan); err != nil {
		// Exit from here: returning would close the listeners under the
		// supervisor, which would race to exit with its own message.
		k.exit(1, "%v (guest console: %s)", err, v.cfg.ConsoleLog)
	}
	return 1, errors.New("libkrun krun_start_enter returned without running the VM: report this with vmm.log")
}

// boot opens the agent channel and sends the boot env with Agent.Boot:
// never through krun_set_env, which puts it on the guest kernel command
// line (the handoff init's environment can hold secrets).
func (k *krunVM) boot(chanLn *net.UnixListener) error {
	conn, err := chanLn.Accept()
	if err != nil {
		return fmt.Errorf("accept guest channel: %w", err)
	}
	if err := k.openAgent(conn); err != nil {
		return err
	}
	k.connected.Store(true)
	return k.agent.Boot(context.Background(), k.cfg.Env)
}

// waitShutdown learns the code the guest is being shut down with. libkrun
// exits when the guest resets; should the guest halt instead, the VMM ends
// the VM itself once ShutdownGrace has passed.
func (k *krunVM) waitShutdown() {
	code, err := k.agent.WaitShutdown(context.Background())
	if err != nil {
		return
	}
	k.code.CompareAndSwap(-1, int64(code))
	grace := k.cfg.ShutdownGrace.Or(defaultShutdownGrace)
	time.Sleep(grace)
	k.exit(int(k.code.Load()), "guest shut down with code %d but libkrun did not exit within %s: ending the VM", code, grace)
}

// stop asks the guest to power off, then ends the VM after ShutdownGrace if
// libkrun has not exited by then. It does not return.
func (k *krunVM) stop() int {
	grace := k.cfg.ShutdownGrace.Or(defaultShutdownGrace)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := k.agent.Shutdown(ctx, vmm.ExitKilled); err != nil {
		log.L.WithError(err).Warn("guest shutdown request failed")
	}
	k.code.CompareAndSwap(-1, vmm.ExitKilled)
	<-ctx.Done()
	k.exit(vmm.ExitKilled, "guest did not power off within %s: ending the VM", grace)
	return vmm.ExitKilled // not reached
}

// bootSlow: libkrun runs under KVM only, there is nothing to fall back to.
func (k *krunVM) bootSlow() {}

// exited is nil: libkrun ends the process when the guest stops (atExit).
func (k *krunVM) exited() <-chan struct{} { return nil }

func (k *krunVM) exitErr() error { return nil }

func (k *krunVM) guestCode() int { return vmm.ExitGuestLost } // not reached: exited is nil

// atExit runs inside libkrun's exit(): clean up and pick the exit code.
// Before the agent connected, libkrun's code stands (its init reports 125
// to 127 when it cannot start the agent); after, the code the agent
// announced, or vmm.ExitGuestLost when the guest stopped unasked.
func (k *krunVM) atExit() int {
	k.cleanup()
	if !k.connected.Load() {
		return -1
	}
	deadline := time.Now().Add(100 * time.Millisecond)
	for {
		if c := k.code.Load(); c >= 0 {
			return int(c)
		}
		if time.Now().After(deadline) {
			log.L.Warnf("guest stopped without a shutdown request: exiting %d", vmm.ExitGuestLost)
			return vmm.ExitGuestLost
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exit ends the VMM process (and with it the VM) from Go.
func (k *krunVM) exit(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "msb-vmm: %s: %s\n", k.cfg.Name, fmt.Sprintf(format, args...))
	k.cleanup()
	os.Exit(code)
}

// cleanup removes the sockets and, when the creator died, cfg.Cleanup.
// It runs once, from whichever exit path comes first.
func (k *krunVM) cleanup() { k.removeState() }
