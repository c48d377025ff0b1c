package vmmproc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/containerd/log"

	"github.com/msb-dev/msb/vmm"
)

// guestVM is one backend's side of the supervision loop: how its agent
// comes up, how its hypervisor ends, and how its guest is stopped. The qemu
// backend is *vm itself (process.go), libkrun is *krunVM (libkrun_vmm.go).
type guestVM interface {
	// boot accepts the guest channel on chanLn, opens the agent and
	// brings it up with the boot env.
	boot(chanLn *net.UnixListener) error
	// bootSlow is called once when the agent is not up KVMBootTimeout
	// after start (a backend may retry under TCG).
	bootSlow()
	// exited is closed when the hypervisor stopped by itself; nil when the
	// backend ends the process itself when the guest stops (libkrun).
	exited() <-chan struct{}
	// exitErr is why the hypervisor stopped, once exited is closed.
	exitErr() error
	// guestCode is the VMM's exit code once exited is closed after boot.
	guestCode() int
	// waitShutdown runs once the agent is up, to learn the code the guest
	// is being shut down with.
	waitShutdown()
	// stop asks the guest to power off, gives it ShutdownGrace, and
	// returns the VMM's exit code (or ends the process itself).
	stop() int
}

// supervise is the VMM's one supervision loop for every backend: it boots
// the agent (bounded by BootTimeout), then serves the relay, and ends when
// the hypervisor stops, the creator dies (EOF on watch, unless detached) or
// a signal arrives on sigs. It returns the VMM's exit code; the error says
// why the VM ended early. start is when the hypervisor was started.
func (v *vm) supervise(g guestVM, relayLn, chanLn *net.UnixListener, watch *os.File, sigs <-chan os.Signal, start time.Time) (int, error) {
	cfg := v.cfg
	watchEOF := make(chan struct{})
	if watch != nil {
		go v.watchCreator(watch, watchEOF)
	}

	booted := make(chan error, 1)
	go func() { booted <- g.boot(chanLn) }()
	bootTimeout := time.After(cfg.BootTimeout.Or(defaultBootTimeout))
	kvmTimer := time.NewTimer(cfg.KVMBootTimeout.Or(defaultKVMBootTimeout))
	defer kvmTimer.Stop()
	for waiting := true; waiting; {
		select {
		case err := <-booted:
			if err != nil {
				return 1, fmt.Errorf("boot: %w (guest console: %s)", err, cfg.ConsoleLog)
			}
			waiting = false
		case <-kvmTimer.C:
			g.bootSlow()
		case <-g.exited():
			return vmm.ExitGuestLost, fmt.Errorf("hypervisor exited during boot: %v%s (guest console: %s)", g.exitErr(), qemuSaid(cfg), cfg.ConsoleLog)
		case <-bootTimeout:
			return 1, fmt.Errorf("agent not ready within %s (guest console: %s)", cfg.BootTimeout.Or(defaultBootTimeout), cfg.ConsoleLog)
		case <-watchEOF:
			v.setOrphaned()
			return vmm.ExitKilled, errors.New("creator exited during boot")
		case s := <-sigs:
			return vmm.ExitKilled, fmt.Errorf("%v during boot", s)
		}
	}
	log.L.Infof("agent ready %s after start", time.Since(start).Round(time.Millisecond))
	go relay(relayLn, v.sess, map[string]func(net.Conn){vmm.KindMemory: v.serveMemory})
	go g.waitShutdown()
	if cfg.Container != nil && v.superviseContainer != nil {
		go v.superviseContainer(cfg, v.detached)
	}

	select {
	case <-g.exited():
		return g.guestCode(), nil
	case <-watchEOF:
		v.setOrphaned()
		log.L.Info("creator exited: shutting the guest down")
		return g.stop(), nil
	case s := <-sigs:
		log.L.Infof("%v: shutting the guest down", s)
		return g.stop(), nil
	}
}

// watchCreator reads the parent-watch pipe: EOF closes eof (the creator
// died), unless the creator wrote vmm.DetachByte first, which closes
// v.detached and lets the VMM outlive it. A pool VM's creator writes
// vmm.ParkByte instead: the VMM then waits for its next creator on the
// lifeline socket and watches that connection the same way.
func (v *vm) watchCreator(watch io.ReadCloser, eof chan<- struct{}) {
	b := make([]byte, 1)
	for {
		n, err := watch.Read(b)
		if n == 1 && b[0] == vmm.ParkByte && v.lifeline != nil {
			watch.Close()
			log.L.Info("parked in the pool: waiting for a creator on the lifeline")
			stopWatch := v.watchLifeline()
			conn, err := v.lifeline.Accept()
			stopWatch()
			v.lifeline.Close() // one claim only
			if err != nil {
				log.L.WithError(err).Info("parked VM unreachable: shutting the guest down")
				close(eof)
				return
			}
			if err := v.serveClaim(conn); err != nil {
				log.L.WithError(err).Warn("claim failed: shutting the guest down")
				conn.Close()
				close(eof)
				return
			}
			log.L.Info("claimed from the pool")
			watch = conn
			continue
		}
		if n == 1 && b[0] == vmm.DetachByte {
			v.mu.Lock()
			v.detachedSet = true
			v.mu.Unlock()
			close(v.detached)
			_, _ = io.Copy(io.Discard, watch)
			return
		}
		if err != nil {
			close(eof)
			return
		}
	}
}

// lifelinePoll is how often a parked VM checks its lifeline socket.
const lifelinePoll = 2 * time.Second

// watchLifeline closes the lifeline listener when its socket file is
// removed or replaced: a parked VM nobody can reach any more (its pool's
// directory was deleted) must not run on, unclaimed, for ever. The
// returned func stops the watch.
func (v *vm) watchLifeline() func() {
	var want os.FileInfo
	if st, err := os.Stat(v.cfg.Lifeline); err == nil {
		want = st
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(lifelinePoll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			st, err := os.Stat(v.cfg.Lifeline)
			if err != nil || want == nil || !os.SameFile(st, want) {
				v.lifeline.Close()
				return
			}
		}
	}()
	return func() { close(done) }
}

// serveClaim takes a claim on a newly accepted lifeline connection
// (vmm.ServeClaim): the claimer's network namespace, and its host
// cgroup and OOM score, into which the VMM moves itself and qemu.
func (v *vm) serveClaim(conn net.Conn) error {
	return vmm.ServeClaim(conn, func(req vmm.Claim) error {
		v.mu.Lock()
		defer v.mu.Unlock()
		v.claimedNetNS = req.NetNS
		if req.Host != nil {
			return v.rehome(req.Host, v.hv.pid(), log.L.Infof)
		}
		return nil
	})
}
