package taskio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/log"
)

// Bounds on a binary:// logger.
const (
	loggerReadyTimeout = 30 * time.Second
	// loggerDrainTimeout is how long the exit of a process waits for its
	// logger to write out what it has and exit after its pipes' EOF.
	loggerDrainTimeout = 2 * time.Second
	// loggerTermTimeout is how long a logger has after SIGTERM.
	loggerTermTimeout = 10 * time.Second
)

// binaryLogger is a binary:// (or binary-v2://) log driver, the protocol
// nerdctl and Docker use: the binary gets the process's stdout on fd 3, its
// stderr on fd 4, and signals readiness on fd 5. The command (args from the
// URI's query, CONTAINER_ID and CONTAINER_NAMESPACE in its environment) is
// built as containerd's runc shim builds it (newBinaryCmd).
type binaryLogger struct {
	cmd            *exec.Cmd
	stdout, stderr *os.File // write ends
	done           chan struct{}
}

func startBinaryLogger(ctx context.Context, id, namespace string, uri *url.URL) (_ *binaryLogger, retErr error) {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	outR, outW, err := pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := pipe()
	if err != nil {
		return nil, err
	}
	readyR, readyW, err := pipe()
	if err != nil {
		return nil, err
	}
	cmd := newBinaryCmd(uri, id, namespace)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start logging binary %s: %w", uri.Path, err)
	}
	l := &binaryLogger{cmd: cmd, stdout: outW, stderr: errW, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(l.done)
	}()
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
			<-l.done
		}
	}()
	// Only the logger keeps the read ends and the ready write end.
	outR.Close()
	errR.Close()
	readyW.Close()
	files = []*os.File{readyR}

	ready := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		n, err := readyR.Read(b)
		switch {
		case err != nil && !errors.Is(err, io.EOF):
			ready <- err
		case uri.Scheme == "binary-v2" && n == 0:
			ready <- errors.New("logging binary exited or closed fd 5 without signalling ready")
		default:
			ready <- nil
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			return nil, fmt.Errorf("logging binary %s: %w", uri.Path, err)
		}
	case <-time.After(loggerReadyTimeout):
		return nil, fmt.Errorf("logging binary %s: not ready within %s", uri.Path, loggerReadyTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return l, nil
}

// closeInput gives the logger EOF on both streams.
func (l *binaryLogger) closeInput() {
	l.stdout.Close()
	l.stderr.Close()
}

// wait waits up to d for the logger to exit and reports whether it did.
func (l *binaryLogger) wait(d time.Duration) bool {
	select {
	case <-l.done:
		return true
	case <-time.After(d):
		return false
	}
}

// terminate ends a logger that is still running after its input's EOF, as
// runc's shim does when the process is deleted: SIGTERM, then SIGKILL.
func (l *binaryLogger) terminate() {
	l.closeInput()
	if l.wait(0) {
		return
	}
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	if l.wait(loggerTermTimeout) {
		return
	}
	log.L.Warnf("logging binary %s ignored SIGTERM for %s: killing it", l.cmd.Path, loggerTermTimeout)
	_ = l.cmd.Process.Kill()
	<-l.done
}
