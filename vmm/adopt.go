package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Claim is the one line a claimer sends on a pool VM's lifeline.
type Claim struct {
	// Host is where the VM's processes go on the host: the container's
	// cgroup and OOM score (nil: they stay).
	Host *HostResources `json:"host,omitempty"`
	// NetNS is the network namespace the claimer moves the VM's taps to
	// ("": they stay in the VM's own), where the VMM unwires them if its
	// creator dies.
	NetNS string `json:"netns,omitempty"`
}

// claimReply is the VMM's one-line answer.
type claimReply struct {
	Error string `json:"error,omitempty"`
}

// claimTimeout bounds the exchange on the lifeline.
const claimTimeout = 30 * time.Second

// Adopt makes the caller the creator of a parked pool VM (ADR 020): it
// connects to the VM's lifeline socket, which the VMM accepts once, checks
// that the peer is process pid, and sends it c (the VMM moves itself and
// its hypervisor to c.Host). The connection is then the VMM's lifeline, as a spawned VMM's
// parent-watch pipe is: Release, or the caller's death, shuts the guest
// down; Done and Kill work through a pidfd, so a reused pid is never
// signalled.
func Adopt(pid int, lifeline string, c Claim) (_ *Handle, retErr error) {
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
	if err := claimExchange(conn, c); err != nil {
		conn.Close() // the VM shuts down
		return nil, fmt.Errorf("pool VM process %d: %w", pid, err)
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

// claimExchange sends req and reads the VMM's reply.
func claimExchange(conn net.Conn, req Claim) error {
	if err := conn.SetDeadline(time.Now().Add(claimTimeout)); err != nil {
		return err
	}
	defer conn.SetDeadline(time.Time{})
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("claim: %w", err)
	}
	line, err := readLine(conn)
	if err != nil {
		return fmt.Errorf("claim: no answer: %w", err)
	}
	var rep claimReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return fmt.Errorf("claim: bad answer %q: %w", line, err)
	}
	if rep.Error != "" {
		return fmt.Errorf("claim: %s", rep.Error)
	}
	return nil
}

// readLine reads up to '\n' a byte at a time, so nothing after the line
// is consumed (the lifeline is then read for its EOF).
func readLine(r io.Reader) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < 64<<10 {
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}
	return nil, errors.New("line too long")
}
