package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"

	"github.com/msb-dev/msb/mounts"
)

// krunAtExitHook is called (through the C atexit handler) when libkrun
// exits the process; it returns the exit code to use, or -1 for libkrun's.
var krunAtExitHook atomic.Pointer[func() int]

// krunVM is the VMM process driving libkrun. libkrun's krun_start_enter
// never returns: it runs the VM on the calling thread and calls exit()
// when the guest stops. So everything else (agent channel, boot, relay,
// parent watchdog, signals) runs in goroutines started before it, and the
// process ends either in libkrun's exit() (through atExit) or in k.exit.
type krunVM struct {
	*vm
	lib      *libkrun
	plan     krunPlan
	chanSock string
	start    time.Time

	// code is the exit code the agent announced (WaitShutdown), or -1.
	code atomic.Int64
	// connected is set once the guest opened the agent channel.
	connected atomic.Bool

	mu      sync.Mutex // guards cleaned and vm.orphaned
	cleaned bool
}

// runLibkrun configures libkrun, writes the startup line and enters the VM.
// It returns only when libkrun refuses the configuration.
func runLibkrun(v *vm, lib *libkrun, relayLn, chanLn *net.UnixListener, chanSock string, watch, startup *os.File) (int, error) {
	k := &krunVM{vm: v, lib: lib, chanSock: chanSock}
	k.code.Store(-1)
	plan, err := lib.configure(v.cfg, chanSock, log.L.Warnf)
	if err != nil {
		return 1, err
	}
	k.plan = plan
	if err := registerKrunAtExit(); err != nil {
		return 1, err
	}
	hook := k.atExit
	krunAtExitHook.Store(&hook)
	defer krunAtExitHook.Store(nil)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if err := WriteStartupLine(startup); err != nil {
		return 1, fmt.Errorf("write startup line: %w", err)
	}
	startup.Close()
	k.start = time.Now()
	go k.supervise(relayLn, chanLn, watch, sigs)

	// The VM runs on this thread until libkrun exits the process.
	runtime.LockOSThread()
	ret := lib.api.startEnter(plan.ctx)
	if err := check("krun_start_enter", ret); err != nil {
		// Exit from here: returning would close the listeners under the
		// supervisor, which would race to exit with its own message.
		k.exit(1, "%v (guest console: %s)", err, v.cfg.ConsoleLog)
	}
	return 1, errors.New("libkrun krun_start_enter returned without running the VM: report this with vmm.log")
}

// supervise boots the agent, serves the relay and watches the creator.
func (k *krunVM) supervise(relayLn, chanLn *net.UnixListener, watch *os.File, sigs <-chan os.Signal) {
	watchEOF := make(chan struct{})
	if !k.cfg.Detached && watch != nil {
		go func() {
			_, _ = io.Copy(io.Discard, watch)
			close(watchEOF)
		}()
	}
	booted := make(chan error, 1)
	go func() { booted <- k.boot(chanLn) }()
	timeout := k.cfg.BootTimeout.or(defaultBootTimeout)
	select {
	case err := <-booted:
		if err != nil {
			k.exit(1, "boot: %v (guest console: %s)", err, k.cfg.ConsoleLog)
		}
	case <-time.After(timeout):
		k.exit(1, "agent not ready within %s (guest console: %s)", timeout, k.cfg.ConsoleLog)
	case <-watchEOF:
		k.setOrphaned()
		k.exit(ExitKilled, "creator exited during boot")
	case s := <-sigs:
		k.exit(ExitKilled, "%v during boot", s)
	}
	log.L.Infof("agent ready %s after start", time.Since(k.start).Round(time.Millisecond))
	go relay(relayLn, k.sess)
	go k.waitShutdown()
	select {
	case <-watchEOF:
		k.setOrphaned()
		log.L.Info("creator exited: shutting the guest down")
	case s := <-sigs:
		log.L.Infof("%v: shutting the guest down", s)
	}
	k.stop()
}

// boot opens the agent channel. The boot env normally reached the agent
// through krun_set_env, and the agent booted from its environment before
// it connected; the Boot call is sent only when the env did not fit there,
// or when the agent says it has not booted.
func (k *krunVM) boot(chanLn *net.UnixListener) error {
	conn, err := chanLn.Accept()
	if err != nil {
		return fmt.Errorf("accept guest channel: %w", err)
	}
	if err := k.openAgent(conn); err != nil {
		return err
	}
	k.connected.Store(true)
	ctx := context.Background()
	if !k.plan.bootViaRPC {
		st, err := k.agent.Status(ctx)
		if err != nil {
			return fmt.Errorf("agent status: %w", err)
		}
		if strings.HasPrefix(st, "booted") {
			return nil
		}
		log.L.Warnf("agent has not booted from its environment (status %q): sending the boot env over the channel", st)
	}
	return k.agent.Boot(ctx, k.cfg.Env)
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
	grace := k.cfg.ShutdownGrace.or(defaultShutdownGrace)
	time.Sleep(grace)
	k.exit(int(k.code.Load()), "guest shut down with code %d but libkrun did not exit within %s: ending the VM", code, grace)
}

// stop asks the guest to power off, then ends the VM after ShutdownGrace if
// libkrun has not exited by then.
func (k *krunVM) stop() {
	grace := k.cfg.ShutdownGrace.or(defaultShutdownGrace)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := k.agent.Shutdown(ctx, ExitKilled); err != nil {
		log.L.WithError(err).Warn("guest shutdown request failed")
	}
	k.code.CompareAndSwap(-1, ExitKilled)
	<-ctx.Done()
	k.exit(ExitKilled, "guest did not power off within %s: ending the VM", grace)
}

// atExit runs inside libkrun's exit(): clean up and pick the exit code.
// Before the agent connected, libkrun's code stands (its init reports 125
// to 127 when it cannot start the agent); after, the code the agent
// announced, or ExitGuestLost when the guest stopped unasked.
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
			log.L.Warnf("guest stopped without a shutdown request: exiting %d", ExitGuestLost)
			return ExitGuestLost
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

func (k *krunVM) setOrphaned() {
	k.mu.Lock()
	k.orphaned = true
	k.mu.Unlock()
}

// cleanup removes the sockets and, when the creator died, cfg.Cleanup.
// It runs once, from whichever exit path comes first.
func (k *krunVM) cleanup() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cleaned {
		return
	}
	k.cleaned = true
	_ = os.Remove(k.cfg.AgentSocket)
	_ = os.Remove(k.chanSock)
	if !k.orphaned {
		return
	}
	for _, p := range k.cfg.Cleanup {
		// Below a pod VM's state dir are its containers' binds.
		if err := mounts.RemoveAllUnmounted(p); err != nil {
			log.L.WithError(err).Warnf("cleanup %s", p)
		}
	}
}
