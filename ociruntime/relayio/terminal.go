package relayio

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/containerd/console"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Terminal is msb-runtime run's own terminal, which a container with
// process.terminal uses as runc run does: raw mode while the container
// runs, the container's pty sized like it and resized with it (SIGWINCH).
type Terminal struct {
	con console.Console
}

// OpenTerminal returns stdin as a terminal, or an error if it is not one.
func OpenTerminal(in io.Reader) (*Terminal, error) {
	f, ok := in.(*os.File)
	if ok {
		if con, err := console.ConsoleFromFile(f); err == nil {
			return &Terminal{con: con}, nil
		}
	}
	return nil, fmt.Errorf("process.terminal is true but msb-runtime's stdin is not a terminal: run it from a terminal or set process.terminal to false")
}

// Box is the terminal's size as an OCI console size (nil if unknown).
func (t *Terminal) Box() *specs.Box {
	ws, err := t.con.Size()
	if err != nil || ws.Height == 0 || ws.Width == 0 {
		return nil
	}
	return &specs.Box{Height: uint(ws.Height), Width: uint(ws.Width)}
}

// Raw puts the terminal in raw mode: keys go to the container as typed.
func (t *Terminal) Raw() error { return t.con.SetRaw() }

// Restore undoes Raw.
func (t *Terminal) Restore() {
	if err := t.con.Reset(); err != nil {
		log.L.WithError(err).Warn("restore the terminal")
	}
}

// ForwardResize passes the terminal's size changes to the pty of process
// id/execID until stop is called.
func (t *Terminal) ForwardResize(ctx context.Context, tc task.TTRPCTaskService, id, execID string) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ch:
				ws, err := t.con.Size()
				if err != nil {
					continue
				}
				if _, err := tc.ResizePty(ctx, &task.ResizePtyRequest{ID: id, ExecID: execID, Width: uint32(ws.Width), Height: uint32(ws.Height)}); err != nil {
					log.G(ctx).WithError(err).Debug("resize the container's terminal")
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}
