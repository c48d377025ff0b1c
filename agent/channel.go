package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/agent/task"
	"github.com/msb-dev/msb/mounts/bootenv"
	"github.com/msb-dev/msb/protocol"
)

// RunGuest is main for the agent proper in the guest (started by RunInit).
// It only returns on a fatal error.
func RunGuest() int {
	SetupLogging()
	channel := channelKind()
	opts := Options{
		Guest:   true,
		Channel: channel,
	}
	opts.NoPivot = os.Getenv(noPivotEnv) != ""
	if p, err := task.RuntimeFromImage(task.RuntimeFile); err != nil {
		log.L.WithError(err).Errorf("OCI runtime: using %s", task.DefaultRuntimePath)
	} else {
		opts.RuntimePath = p
	}
	if c, err := fileConn(handoffFD, "handoff"); err == nil {
		opts.Handoff = handoffClient(c)
	} else {
		log.L.WithError(err).Warn("no handoff socket from PID 1: MSB_HANDOFF_INIT will be refused")
	}
	a, err := New(opts)
	if err != nil {
		log.L.WithError(err).Error("agent")
		return 1
	}
	// Backends that give the boot env to the guest's init (libkrun) do
	// not call Boot.
	if env := bootEnvOf(os.Environ()); len(env) > 0 {
		if err := a.Boot(env); err != nil {
			log.L.WithError(err).Error("boot from the environment")
		}
	}
	ctx := context.Background()
	backoff := 100 * time.Millisecond
	for {
		conn, err := openChannel(ctx, channel)
		if err != nil {
			log.L.WithError(err).Error("agent channel")
			time.Sleep(time.Second)
			continue
		}
		opened := time.Now()
		log.L.Debugf("agent channel open (%s)", channel)
		if err := a.Serve(ctx, conn); err != nil {
			log.L.WithError(err).Warn("agent channel")
		}
		conn.Close()
		// A virtio-serial port reads EOF while no host is connected:
		// back off instead of spinning, and log real sessions only. A
		// detached agent (a template being saved) reopens at once.
		if a.Detached() {
			backoff = detachedBackoff
		} else if time.Since(opened) > 2*time.Second {
			log.L.Infof("agent channel closed after %s: reopening", time.Since(opened).Round(time.Millisecond))
			backoff = 100 * time.Millisecond
		} else if backoff < time.Second {
			backoff *= 2
		}
		time.Sleep(backoff)
	}
}

// bootEnvOf keeps the boot env's own keys (MSB_*, minus the channel).
func bootEnvOf(env []string) []string {
	var out []string
	for _, kv := range env {
		if strings.HasPrefix(kv, bootenv.Prefix) && !strings.HasPrefix(kv, ChannelEnv+"=") && !strings.HasPrefix(kv, "MSB_AGENT_") {
			out = append(out, kv)
		}
	}
	return out
}

// channelKind reads MSB_CHANNEL from the environment or the kernel command
// line.
func channelKind() string {
	v := os.Getenv(ChannelEnv)
	if v == "" {
		if b, err := os.ReadFile("/proc/cmdline"); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if s, ok := strings.CutPrefix(f, ChannelEnv+"="); ok {
					v = s
				}
			}
		}
	}
	if v == ChannelVsock {
		return ChannelVsock
	}
	return ChannelVirtioSerial
}

// openChannel opens the agent channel, retrying for a while until the
// device or the host side appears.
func openChannel(ctx context.Context, kind string) (net.Conn, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var c net.Conn
		var err error
		if kind == ChannelVsock {
			c, err = dialVsock(2, protocol.VsockPort)
		} else {
			c, err = openVirtioPort(protocol.PortName)
		}
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// openVirtioPort opens /dev/vportNpM whose sysfs name is name.
func openVirtioPort(name string) (net.Conn, error) {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range names {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(p))
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		return &fileConnAdapter{File: f}, nil
	}
	return nil, fmt.Errorf("no virtio-serial port named %q (%d ports)", name, len(names))
}

func dialVsock(cid, port uint32) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock connect %d:%d: %w", cid, port, err)
	}
	// Non-blocking, so the os.File goes through the poller (deadlines).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// net.FileConn does not know AF_VSOCK; an os.File does the job.
	return &fileConnAdapter{File: os.NewFile(uintptr(fd), "vsock")}, nil
}

// fileConnAdapter makes a character device a net.Conn for yamux.
type fileConnAdapter struct{ *os.File }

func (f *fileConnAdapter) LocalAddr() net.Addr  { return chanAddr{} }
func (f *fileConnAdapter) RemoteAddr() net.Addr { return chanAddr{} }
