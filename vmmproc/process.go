// Package vmmproc is the VMM process (`msb-runtime vmm`, Main): one per
// VM, started by its creator through package vmm (Spawn), with which it
// shares the launch config and the fd contract. It boots the VM with the
// qemu backend (jailed through package jail) or libkrun, brings the agent
// up, relays clients to it, enters the VM's host cgroup, and stops the VM
// when its creator dies, recording why a VM that stopped unasked ended.
package vmmproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/caplog"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/network"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/view"
	"github.com/msb-dev/msb/vmm"
)

const (
	defaultBootTimeout   = 2 * time.Minute
	defaultShutdownGrace = 3 * time.Second
	// A KVM guest boots in well under a second; one that is not up after
	// this (auto accel only) is taken to be hung by broken nested KVM.
	defaultKVMBootTimeout = 15 * time.Second
)

// Main is the VMM process (msb-runtime vmm), called on the main thread,
// locked to it (package view). It reads its launch config from
// vmm.ConfigFD, boots the VM, writes the startup line, relays agent clients, and
// returns the exit code the process must exit with: the code the guest was
// shut down with, or vmm.ExitGuestLost/vmm.ExitKilled.
func Main(o MainOptions) int {
	cfg, err := readConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "msb-vmm: %v\n", err)
		return 1
	}
	if cfg.Container != nil && o.Container == nil {
		fmt.Fprintf(os.Stderr, "msb-vmm: %s: launch config asks for container mode, which this binary does not serve\n", cfg.Name)
		return 1
	}
	if unix.Gettid() != unix.Getpid() {
		fmt.Fprintf(os.Stderr, "msb-vmm: %s: the VMM must run on the main thread, locked to it in the binary's init (package view)\n", cfg.Name)
		return 1
	}
	// The VMM itself runs on other threads, in the host's mount namespace;
	// this one moves into the container's view when run asks (package view)
	// and stays there until run returns the code.
	views, viewed := make(chan string), make(chan error)
	done := make(chan int)
	go func() {
		view := func(dir string) error {
			views <- dir
			return <-viewed
		}
		code, err := run(cfg, o, view, os.NewFile(vmm.ParentWatchFD, "parent-watch"), os.NewFile(vmm.StartupFD, "startup"))
		if err != nil {
			fmt.Fprintf(os.Stderr, "msb-vmm: %s: %v\n", cfg.Name, err)
		}
		done <- code
	}()
	for {
		select {
		case dir := <-views:
			viewed <- view.Enter(dir, cfg.RuntimeDir)
		case code := <-done:
			return code
		}
	}
}

// MainOptions are what the binary serving as VMM adds to it.
type MainOptions struct {
	// Container supervises a container-mode VMM's container (its stdio and
	// its exit) once the agent is up; detached is closed when the creator
	// has handed the VM over (vmm.Handle.Detach). It makes the VMM exit with
	// the container's status by shutting the guest down with it.
	Container func(cfg *vmm.LaunchConfig, detached <-chan struct{})
}

func readConfig() (*vmm.LaunchConfig, error) {
	f := os.NewFile(vmm.ConfigFD, "launch-config")
	if f == nil {
		return nil, errors.New("no launch config on fd 3: this command is started by msb, not by hand")
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read launch config from fd %d: %w", vmm.ConfigFD, err)
	}
	return vmm.DecodeConfig(b)
}

// vm is the VMM process's state for one VM.
type vm struct {
	cfg      *vmm.LaunchConfig
	hv       *qemu
	console  *caplog.Console
	sess     *yamux.Session
	agent    *protocol.AgentClient
	exitCode chan int32 // the code the guest was shut down with

	superviseContainer func(cfg *vmm.LaunchConfig, detached <-chan struct{})
	detached           chan struct{} // closed on vmm.DetachByte from the creator
	// lifeline is a pool VM's listener for its next creator (vmm.ParkByte).
	lifeline *net.UnixListener
	// tcg: qemu was to start under TCG (its host cgroup's limits).
	tcg bool
	// claimedNetNS is where a claimer moved a pool VM's taps (vmm.Claim).
	claimedNetNS string
	// host is the cgroup the VMM moved into (enterHost), left in
	// removeState.
	host *hostCgroup
	// memMu orders resizes (setMemory); mem is what they left.
	memMu sync.Mutex
	mem   memState

	mu sync.Mutex // guards orphaned, detachedSet, cleaned and host (rehome)
	// orphaned is set when the creator died: then the VMM removes
	// cfg.Cleanup itself, since nobody else will.
	orphaned bool
	// detachedSet: the creator handed the VM over; the VMM undoes the
	// network wiring itself when it ends, but leaves the state dir to
	// whoever deletes the container.
	detachedSet bool
	cleaned     bool
}

// run is the VMM; view moves the main thread into the container's view
// (package view).
func run(cfg *vmm.LaunchConfig, o MainOptions, view func(dir string) error, watch, startup *os.File) (code int, retErr error) {
	v := &vm{cfg: cfg, exitCode: make(chan int32, 1), superviseContainer: o.Container, detached: make(chan struct{})}
	defer v.cleanup()
	logf := os.Stderr

	relayLn, err := listenUnix(cfg.AgentSocket)
	if err != nil {
		return 1, err
	}
	defer relayLn.Close()
	chanSock := vmm.ChannelSocket(cfg)
	chanLn, err := listenUnix(chanSock)
	if err != nil {
		return 1, err
	}
	defer chanLn.Close()

	backend, krun, err := selectBackend(cfg, log.L.Infof)
	if err != nil {
		return 1, err
	}
	if cfg.Lifeline != "" {
		if backend == vmm.BackendLibkrun {
			return 1, errors.New("a pool VM (lifeline) needs backend qemu: libkrun ends the process with the guest and cannot be handed over")
		}
		if v.lifeline, err = listenUnix(cfg.Lifeline); err != nil {
			return 1, err
		}
		defer v.lifeline.Close()
	}
	// Before the hypervisor starts: it inherits the cgroup and OOM score.
	if cfg.Nice != 0 {
		// Before the hypervisor starts: it inherits it.
		if err := renice(os.Getpid(), cfg.Nice); err != nil {
			return 1, err
		}
	}
	v.tcg = startsTCG(cfg, backend)
	if v.host, err = enterHost(cfg, backend, v.tcg, log.L.Infof); err != nil {
		return 1, err
	}
	// After the host cgroup (its library reads /proc/self, the view's
	// then), before any pid of this process reaches a client. A pool VM
	// keeps the host's: it moves into a claimer's cgroup later.
	if cfg.Lifeline == "" {
		if err := view(cfg.View); err != nil {
			return 1, err
		}
	}
	if backend == vmm.BackendLibkrun {
		if len(cfg.NICs) > 0 {
			log.L.Warnf("backend libkrun: %d NIC(s) not wired: this build joins only qemu guests to the container's network; use backend qemu for networking", len(cfg.NICs))
		}
		// Returns only if libkrun refused the configuration; otherwise
		// libkrun ends the process with the guest (libkrun_vmm.go).
		return runLibkrun(v, krun, relayLn, chanLn, chanSock, watch, startup)
	}
	taps, err := network.CreateTaps(cfg.NICs)
	if err != nil {
		return 1, err
	}
	defer closeAll(taps)
	consLn, err := listenUnix(vmm.ConsoleSocket(cfg))
	if err != nil {
		return 1, err
	}
	if v.console, err = caplog.ServeConsole(consLn, cfg.ConsoleLog, cfg.ConsoleLogMax); err != nil {
		return 1, err
	}
	defer v.console.Close()
	qemuOut, closeQEMUOut, err := qemuOutput(cfg)
	if err != nil {
		return 1, err
	}
	defer closeQEMUOut()
	monLn, err := listenUnix(vmm.MonitorSocket(cfg))
	if err != nil {
		return 1, err
	}
	mon := newMonitor(monLn, v.balloonAtStart)
	defer mon.close()
	tmpl, err := openTemplate(cfg)
	if err != nil {
		return 1, err
	}
	defer tmpl.close()
	start := time.Now()
	v.hv, err = startQEMU(cfg, chanSock, mon, tmpl, logf, qemuOut, taps)
	if err != nil {
		return 1, err
	}
	defer func() {
		v.hv.Kill()
		<-v.hv.Done()
	}()
	if err := vmm.WriteStartupLine(startup); err != nil {
		return 1, fmt.Errorf("write startup line: %w", err)
	}
	startup.Close()
	if cfg.Template != "" {
		_, tf := tmpl.fds(taps)
		if err := v.restore(tf.state); err != nil {
			return 1, fmt.Errorf("%w%s", err, qemuSaid(cfg))
		}
	}
	if cfg.TemplateSave != "" {
		if err := v.saveTemplate(chanLn, tmpl.ram); err != nil {
			return 1, fmt.Errorf("%w%s", err, qemuSaid(cfg))
		}
		return 0, nil
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, shutdownSignals(cfg)...)
	return v.supervise(v, relayLn, chanLn, watch, sigs, start)
}

// The qemu backend's side of the supervision loop (guestVM).

func (v *vm) bootSlow() {
	if v.hv.GiveUpKVM() {
		log.L.Warnf("guest not up %s after start under KVM: retrying under TCG", v.cfg.KVMBootTimeout.Or(defaultKVMBootTimeout))
	}
}

func (v *vm) exited() <-chan struct{} { return v.hv.Done() }

func (v *vm) exitErr() error { return v.hv.err }

// boot accepts the guest channel, starts the mux, and sends the boot env.
// A channel that closes before the agent answered belonged to a hypervisor
// that died (the KVM attempt before a TCG fallback): wait for the next one.
// An error the agent returns is final.
func (v *vm) boot(chanLn *net.UnixListener) error {
	for {
		conn, err := chanLn.Accept()
		if err != nil {
			return fmt.Errorf("accept guest channel: %w", err)
		}
		err = v.openAgent(conn)
		if err == nil && v.cfg.MemoryCeiling() > v.cfg.MemoryMiB {
			// The balloon holds the headroom before the agent is up.
			ctx, cancel := context.WithTimeout(context.Background(), monitorConnectTimeout)
			_, err = v.hv.mon.client(ctx)
			cancel()
		}
		if err == nil {
			err = v.agent.Boot(context.Background(), v.cfg.Env)
		}
		if err == nil {
			// The guest starts from the RTC's whole seconds.
			if cerr := v.agent.SetClock(context.Background(), time.Now()); cerr != nil {
				log.L.WithError(cerr).Warn("guest clock not set")
			}
			if v.cfg.Template != "" {
				err = v.reseed(context.Background())
			}
		}
		if err == nil || !v.sess.IsClosed() {
			return err
		}
		log.L.WithError(err).Warn("guest channel closed before the agent answered: waiting for the hypervisor to reconnect")
	}
}

// openAgent opens the mux on the guest channel conn and the Agent client
// on its control stream.
func (v *vm) openAgent(conn net.Conn) error {
	var err error
	v.sess, err = yamux.Client(newGuestFrames(conn), protocol.MuxConfig())
	if err != nil {
		conn.Close()
		return fmt.Errorf("mux: %w", err)
	}
	s, err := v.sess.Open()
	if err != nil {
		return fmt.Errorf("open control stream: %w", err)
	}
	if err := protocol.WriteHeader(s, protocol.KindTTRPC, ""); err != nil {
		return err
	}
	v.agent = protocol.NewAgentClient(ttrpc.NewClient(vmm.NewAgentConn(s)))
	return nil
}

// waitShutdown keeps one WaitShutdown call open to learn the exit code the
// guest is being powered off with. The answer comes once the agent has
// stopped every container, synced and unmounted: nothing is left for the
// guest to flush (9p writes and virtio-blk writes completed are the
// host's), so the hypervisor is stopped then rather than after the
// guest's own power-off (a quarter of a second under TCG).
func (v *vm) waitShutdown() {
	code, err := v.agent.WaitShutdown(context.Background())
	if err != nil {
		return
	}
	v.exitCode <- code
	v.hv.Kill()
}

func (v *vm) guestCode() int {
	select {
	case c := <-v.exitCode:
		return int(c)
	case <-time.After(100 * time.Millisecond):
	}
	v.console.Drained(time.Second)
	if err := v.hv.err; hypervisorKilled(err) {
		recordEndCause(v.cfg.RuntimeDir, hypervisorKilledCause(err), vmm.ExitKilled)
		return vmm.ExitKilled
	}
	recordEndCause(v.cfg.RuntimeDir, GuestStopCause(v.cfg.ConsoleLog), vmm.ExitGuestLost)
	return vmm.ExitGuestLost
}

// stop asks the guest to power off and gives it ShutdownGrace to flush
// before the hypervisor is killed.
func (v *vm) stop() int {
	grace := v.cfg.ShutdownGrace.Or(defaultShutdownGrace)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := v.agent.Shutdown(ctx, vmm.ExitKilled); err != nil {
		log.L.WithError(err).Warn("guest shutdown request failed")
	}
	select {
	case <-v.hv.Done():
	case <-ctx.Done():
		log.L.Warnf("guest did not power off within %s: killing the hypervisor", grace)
		v.hv.Kill()
		<-v.hv.Done()
	}
	return vmm.ExitKilled
}

func (v *vm) cleanup() {
	if v.sess != nil {
		v.sess.Close()
	}
	v.removeState()
}

func (v *vm) setOrphaned() {
	v.mu.Lock()
	v.orphaned = true
	v.mu.Unlock()
}

// removeState removes the sockets and, when the creator died, cfg.Cleanup.
// It runs once, from whichever exit path comes first.
func (v *vm) removeState() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cleaned {
		return
	}
	v.cleaned = true
	vmm.RemoveSockets(v.cfg.AgentSocket)
	v.host.leave(log.L.Warnf)
	if !v.orphaned && !v.detachedSet {
		return
	}
	// The creator records the interfaces it wired to this VM's taps and
	// unwires them itself; when it died or handed the VM over, the VMM,
	// in that namespace, does.
	if wires, err := network.LoadWires(v.cfg.RuntimeDir); err != nil {
		log.L.WithError(err).Warn("read network wires")
	} else if err := v.unwire(wires); err != nil {
		log.L.WithError(err).Warn("unwire network")
	}
	cleanup := v.cfg.Cleanup // the creator died: all of it goes
	if !v.orphaned {
		// Detached: the container's record stays for its delete.
		cleanup = nil
		if m := v.cfg.Container; m != nil {
			cleanup = m.Unstage
		}
	}
	for _, p := range cleanup {
		// Below a pod VM's state dir are its containers' binds.
		if err := mounts.RemoveAllUnmounted(p); err != nil {
			log.L.WithError(err).Warnf("cleanup %s", p)
		}
	}
}

// unwire undoes wires in the VMM's network namespace, or where a claimer
// moved the VM's taps.
func (v *vm) unwire(wires []network.Wire) error {
	if len(wires) == 0 || v.claimedNetNS == "" {
		return network.Detach(nil, wires)
	}
	ns, err := network.OpenNS(v.claimedNetNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	return network.Detach(ns, wires)
}

// shutdownSignals are the signals that make the VMM shut its guest down.
// A container's VMM may hold the container's pty as its controlling
// terminal: a hangup there is the container's business (the container
// supervisor passes it on), not the VM's end.
func shutdownSignals(cfg *vmm.LaunchConfig) []os.Signal {
	if cfg.Container != nil {
		return []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	}
	return []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP}
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
