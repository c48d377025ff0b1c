package vmm

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The one alive check and the one stop sequence of every creator (the
// shim, msb-runtime's CLI, the pool): a VMM is known by its pid and start
// time, held by a pidfd, so that a reused pid is never signalled, and it
// is stopped in steps of StopStep.

// StopStep is how long each step of a stop waits for the VMM process to
// go: its guest's power-off takes up to the VMM's ShutdownGrace (3 s),
// plus a margin for the hypervisor's exit.
const StopStep = 5 * time.Second

// ProcStart is pid's start time in clock ticks since boot, and whether it
// runs at all (a zombie has exited).
func ProcStart(pid int) (uint64, bool) {
	if pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), so starttime (field 22) is f[19].
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	return st, err == nil
}

// Proc is a running process that a record names, held by a pidfd.
type Proc struct {
	Pid int
	fd  int
}

// OpenProc returns the process pid if it still runs and started at start
// (ProcStart), else nil: it exited, or the pid now names another process.
func OpenProc(pid int, start uint64) (*Proc, error) {
	if pid <= 0 || start == 0 {
		return nil, nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd of process %d: %w", pid, err)
	}
	// Checked after the pidfd is open: from here the pid cannot be reused
	// under it.
	if st, ok := ProcStart(pid); !ok || st != start {
		unix.Close(fd)
		return nil, nil
	}
	return &Proc{Pid: pid, fd: fd}, nil
}

// Alive reports whether the process whose pid and start time a record
// keeps still runs: the alive check of every creator.
func Alive(pid int, start uint64) bool {
	p, err := OpenProc(pid, start)
	if p == nil || err != nil {
		return false
	}
	defer p.Close()
	return !p.Wait(0)
}

// Close lets the pidfd go.
func (p *Proc) Close() { unix.Close(p.fd) }

// Signal sends sig to the process, never to a process that reused its pid.
func (p *Proc) Signal(sig unix.Signal) error {
	err := unix.PidfdSendSignal(p.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Wait reports whether the process exits within d (it need not be our
// child: the pidfd turns readable when it has exited).
func (p *Proc) Wait(d time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(d)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms < 0 {
			ms = 0
		}
		n, err := unix.Poll(fds, ms)
		if err == nil {
			return n > 0 && fds[0].Revents != 0
		}
		if !errors.Is(err, unix.EINTR) {
			return false
		}
	}
}

// Stop ends the VMM process: shutdown (the guest's own power-off through
// its agent; nil when it cannot be asked), then SIGTERM (the VMM powers
// the guest off), then SIGKILL, StopStep each. It returns once the
// process is gone, or an error when it outlives SIGKILL.
func (p *Proc) Stop(shutdown func() error) error {
	return stopSteps(p.Pid, p.Wait, shutdown,
		func() error { return p.Signal(unix.SIGTERM) },
		func() error { return p.Signal(unix.SIGKILL) })
}

// Stop ends the VMM process the creator holds: shutdown (the guest's own
// power-off through its agent; nil when it cannot be asked), then
// Release (the VMM powers the guest off as when its creator dies), then
// SIGKILL, StopStep each. It returns once the process is gone, or an
// error when it outlives SIGKILL.
func (h *Handle) Stop(shutdown func() error) error {
	gone := func(d time.Duration) bool {
		select {
		case <-h.done:
			return true
		case <-time.After(d):
			return false
		}
	}
	defer h.Release() // the pipe's fd, once the process is gone
	return stopSteps(h.Pid, gone, shutdown, h.Release, h.Kill)
}

// stopSteps is the stop sequence: each step, then up to StopStep for the
// process to go. A shutdown that fails is not waited for.
func stopSteps(pid int, gone func(time.Duration) bool, shutdown, ask, kill func() error) error {
	if gone(0) {
		return nil
	}
	if shutdown != nil && shutdown() == nil && gone(StopStep) {
		return nil
	}
	for _, step := range []func() error{ask, kill} {
		_ = step()
		if gone(StopStep) {
			return nil
		}
	}
	return fmt.Errorf("VMM process %d did not exit after SIGKILL", pid)
}
