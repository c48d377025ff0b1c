package relayio

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/console"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// A process with a terminal gets a pty on each side of the VM: the guest's,
// which the process sees, and a host pty whose master goes to the caller's
// --console-socket as runc sends it, and whose slave end the host process
// (the VMM, or an exec's relay) holds in raw mode, copying bytes to and from
// the guest's pty. Resizes of the master reach the holder as SIGWINCH (the
// slave is its controlling terminal) and are passed on to the guest's pty.

// HostPty opens a pty sized like box and sends its master to the Unix
// socket at consoleSocket; it returns the slave end.
func HostPty(consoleSocket string, box *specs.Box) (*os.File, error) {
	master, slavePath, err := console.NewPty()
	if err != nil {
		return nil, fmt.Errorf("open a pty: %w", err)
	}
	defer master.Close()
	if box != nil {
		_ = master.Resize(console.WinSize{Height: uint16(box.Height), Width: uint16(box.Width)})
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open pty slave %s: %w", slavePath, err)
	}
	if err := sendMaster(consoleSocket, master); err != nil {
		slave.Close()
		return nil, err
	}
	return slave, nil
}

// sendMaster passes the pty master over the console socket as runc does:
// one message, the pty's name as data, the fd as SCM_RIGHTS.
func sendMaster(path string, master console.Console) error {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("--console-socket %s: %w", path, err)
	}
	defer c.Close()
	if _, _, err := c.WriteMsgUnix([]byte(master.Name()), unix.UnixRights(int(master.Fd())), nil); err != nil {
		return fmt.Errorf("--console-socket %s: send the pty master: %w", path, err)
	}
	return nil
}

// HoldPty makes the pty slave this process's raw controlling terminal
// (the process must lead its own session) and passes resizes and hangups
// on to guest process id/execID until ctx ends.
func HoldPty(ctx context.Context, slave *os.File, tc task.TTRPCTaskService, id, execID string) {
	if con, err := console.ConsoleFromFile(slave); err == nil {
		if err := con.SetRaw(); err != nil {
			log.G(ctx).WithError(err).Warn("pty raw mode")
		}
	}
	if err := unix.IoctlSetInt(int(slave.Fd()), unix.TIOCSCTTY, 0); err != nil {
		log.G(ctx).WithError(err).Warn("pty as controlling terminal: resizes will not reach the guest")
	}
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGWINCH, syscall.SIGHUP)
	var last unix.Winsize
	resize := func() {
		ws, err := unix.IoctlGetWinsize(int(slave.Fd()), unix.TIOCGWINSZ)
		if err != nil || *ws == last || ws.Row == 0 || ws.Col == 0 {
			return
		}
		last = *ws
		if _, err := tc.ResizePty(ctx, &task.ResizePtyRequest{ID: id, ExecID: execID, Width: uint32(ws.Col), Height: uint32(ws.Row)}); err != nil {
			log.G(ctx).WithError(err).Debug("resize the guest pty")
		}
	}
	go func() {
		defer signal.Stop(ch)
		resize() // a resize before Notify was lost
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-ch:
				if s == syscall.SIGHUP {
					// The caller closed the master: the process's
					// terminal hung up, as it would under runc.
					_, _ = tc.Kill(ctx, &task.KillRequest{ID: id, ExecID: execID, Signal: uint32(syscall.SIGHUP)})
					continue
				}
				resize()
			}
		}
	}()
}
