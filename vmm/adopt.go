package vmm

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Adopt makes the caller the creator of a parked pool VM (ADR 020): it
// connects to the VM's lifeline socket, which the VMM accepts once, and
// checks that the peer is process pid. The connection is then the VMM's
// lifeline, as a spawned VMM's parent-watch pipe is: Release, or the
// caller's death, shuts the guest down; Done and Kill work through a pidfd,
// so a reused pid is never signalled.
func Adopt(pid int, lifeline string) (_ *Handle, retErr error) {
	// The pidfd first: if the VMM still answers on its lifeline below,
	// it was alive when the pidfd was opened, so the pidfd is its.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pool VM process %d: %w", pid, err)
	}
	defer func() {
		if retErr != nil {
			unix.Close(pidfd)
		}
	}()
	proc, err := os.FindProcess(pid)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: lifeline, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("pool VM process %d: lifeline: %w", pid, err)
	}
	if err := checkPeer(conn, pid); err != nil {
		conn.Close()
		return nil, err
	}
	h := &Handle{Pid: pid, proc: proc, watch: conn, done: make(chan struct{})}
	go func() {
		h.err = waitPidfd(pidfd)
		unix.Close(pidfd)
		close(h.done)
	}()
	return h, nil
}

// checkPeer checks that the process listening on conn's other end is pid.
func checkPeer(conn *net.UnixConn, pid int) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("lifeline peer: %w", cerr)
	}
	if int(cred.Pid) != pid {
		return fmt.Errorf("lifeline is served by process %d, not the pool VM's %d", cred.Pid, pid)
	}
	return nil
}

// waitPidfd blocks until the process behind pidfd has exited (the pidfd
// becomes readable; it need not be our child).
func waitPidfd(pidfd int) error {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == nil && fds[0].Revents != 0 {
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for the pool VM process: %w", err)
		}
	}
}
