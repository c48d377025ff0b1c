package task

import (
	"fmt"
	"io"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// pipeIO is the runc.IO of a process: one pipe per stdio stream the request
// named. Unlike go-runc's NewPipeIO it also closes the read end of stdin in
// the agent after start, so writing stdin to a process that is gone fails
// (EPIPE) instead of blocking on a full pipe.
type pipeIO struct {
	inR, inW   *os.File
	outR, outW *os.File
	errR, errW *os.File
	// null is /dev/null, the process's end of every stream without a
	// pipe: go-runc would otherwise capture runc's output through a pipe
	// the container process inherits, and wait for it to close.
	null *os.File
}

func newPipeIO(uid, gid int, stdin, stdout, stderr bool) (_ *pipeIO, retErr error) {
	p := &pipeIO{}
	defer func() {
		if retErr != nil {
			p.Close()
		}
	}()
	var err error
	if p.null, err = os.OpenFile(os.DevNull, os.O_RDWR, 0); err != nil {
		return nil, err
	}
	if stdin {
		if p.inR, p.inW, err = os.Pipe(); err != nil {
			return nil, err
		}
		if err := fchown(p.inR, uid, gid); err != nil {
			return nil, err
		}
	}
	if stdout {
		if p.outR, p.outW, err = os.Pipe(); err != nil {
			return nil, err
		}
		if err := fchown(p.outW, uid, gid); err != nil {
			return nil, err
		}
	}
	if stderr {
		if p.errR, p.errW, err = os.Pipe(); err != nil {
			return nil, err
		}
		if err := fchown(p.errW, uid, gid); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// fchown without os.File.Fd, which would switch the fd to blocking mode.
func fchown(f *os.File, uid, gid int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.Fchown(int(fd), uid, gid) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("chown stdio pipe to %d:%d: %w", uid, gid, cerr)
	}
	return nil
}

func (p *pipeIO) Stdin() io.WriteCloser {
	if p.inW == nil {
		return nil
	}
	return p.inW
}

func (p *pipeIO) Stdout() io.ReadCloser {
	if p.outR == nil {
		return nil
	}
	return p.outR
}

func (p *pipeIO) Stderr() io.ReadCloser {
	if p.errR == nil {
		return nil
	}
	return p.errR
}

// Set hands the process ends to the runc command.
func (p *pipeIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.null, p.null, p.null
	if p.inR != nil {
		cmd.Stdin = p.inR
	}
	if p.outW != nil {
		cmd.Stdout = p.outW
	}
	if p.errW != nil {
		cmd.Stderr = p.errW
	}
}

// CloseAfterStart drops the agent's copies of the process ends.
func (p *pipeIO) CloseAfterStart() error {
	for _, f := range []*os.File{p.inR, p.outW, p.errW, p.null} {
		if f != nil {
			f.Close()
		}
	}
	return nil
}

// Close closes every end.
func (p *pipeIO) Close() error {
	for _, f := range []*os.File{p.inR, p.inW, p.outR, p.outW, p.errR, p.errW, p.null} {
		if f != nil {
			f.Close()
		}
	}
	return nil
}
