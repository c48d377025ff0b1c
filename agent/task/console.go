package task

import (
	"context"
	"fmt"
	"os"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Terminals. A process with a terminal gets a pty from runc, as with
// containerd's runc shim: runc creates the pty inside the container and
// sends its master over a console socket. The agent copies the stdin
// stream into the master and the master into the stdout stream (a pty has
// one output; a stderr stream is closed unused). The master is read through
// Go's poller, so it can be closed under a blocked read (a leftover process
// holding the slave) like a pipe; EIO, which a master reads once every
// slave fd is closed, is its EOF.

// checkTerminal refuses a request whose terminal flag and OCI process
// disagree: runc goes by the process, the stdio plumbing by the request.
func checkTerminal(what string, reqTerminal, specTerminal bool) error {
	if reqTerminal != specTerminal {
		return fmt.Errorf("%s: the request's terminal flag (%v) and the spec's process.terminal (%v) differ: %w",
			what, reqTerminal, specTerminal, errdefs.ErrInvalidArgument)
	}
	return nil
}

// consoleSocket is where runc sends a terminal process's pty master; nil
// for a process without a terminal.
func (p *process) consoleSocket() (*runc.Socket, error) {
	if !p.tty {
		return nil, nil
	}
	s, err := runc.NewTempConsoleSocket()
	if err != nil {
		return nil, fmt.Errorf("%s: console socket: %w", p.name(), err)
	}
	return s, nil
}

// receiveMaster takes the pty master runc sent to s, as a pollable file.
func receiveMaster(s *runc.Socket) (*os.File, error) {
	con, err := s.ReceiveMaster()
	if err != nil {
		return nil, fmt.Errorf("receive the pty master from runc: %w", err)
	}
	defer con.Close()
	fd, err := unix.FcntlInt(con.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pty master: %w", err)
	}
	// A non-blocking fd makes os.NewFile register it with the poller.
	return os.NewFile(uintptr(fd), "pty-master"), nil
}

// setWinsize sets the terminal size on a pty master.
func setWinsize(f *os.File, ws unix.Winsize) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &ws) }); err != nil {
		return err
	}
	return ierr
}

// resize is ResizePty. A size given before the process has its pty (an
// exec not started yet) is applied when the pty arrives; one given after
// the process exited is ignored, as a late SIGWINCH is not an error.
func (s *Service) resizePty(ctx context.Context, r *task.ResizePtyRequest) error {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return err
	}
	if !p.tty {
		return fmt.Errorf("%s: resize: the process has no terminal: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	ws := unix.Winsize{Row: uint16(r.Height), Col: uint16(r.Width)}
	p.mu.Lock()
	master, exited := p.master, p.exitSeen
	if master == nil {
		p.winsize = &ws
	}
	p.mu.Unlock()
	if master == nil || exited {
		return nil
	}
	if err := setWinsize(master, ws); err != nil {
		if p.exitSeenLocked() {
			return nil
		}
		return fmt.Errorf("%s: resize: %w", p.name(), err)
	}
	return nil
}
