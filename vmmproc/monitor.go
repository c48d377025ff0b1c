package vmmproc

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/msb-dev/msb/qmp"
)

// monitorConnectTimeout bounds how long after its start a qemu may take
// to connect its QMP chardev (it connects while it starts, before the
// guest runs).
const monitorConnectTimeout = time.Minute

// monitor is the VMM's QMP connection to the qemu it runs. Each qemu
// started (a TCG fallback starts a second) connects to the listener once
// (vmm.MonitorSocket); the latest connection is the one used.
type monitor struct {
	ln *net.UnixListener
	// ready runs on each qemu's connection before it is used (the
	// balloon's target at start, ADR 031); its error is the monitor's.
	ready func(context.Context, *qmp.Client) error

	mu      sync.Mutex
	c       *qmp.Client
	err     error
	changed chan struct{} // closed and replaced when c or err changes
}

func newMonitor(ln *net.UnixListener, ready func(context.Context, *qmp.Client) error) *monitor {
	return &monitor{ln: ln, ready: ready, changed: make(chan struct{})}
}

// accept takes the connection of a qemu just started, in the background.
func (m *monitor) accept() {
	m.mu.Lock()
	if m.c != nil {
		m.c.Close()
	}
	m.c, m.err = nil, nil
	m.mu.Unlock()
	go func() {
		_ = m.ln.SetDeadline(time.Now().Add(monitorConnectTimeout))
		var c *qmp.Client
		conn, err := m.ln.AcceptUnix()
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), monitorConnectTimeout)
			c, err = qmp.New(ctx, conn)
			if err != nil {
				conn.Close()
			} else if m.ready != nil {
				if err = m.ready(ctx, c); err != nil {
					c.Close()
					c = nil
				}
			}
			cancel()
		}
		if err != nil {
			err = fmt.Errorf("qemu's QMP socket: %w", err)
		}
		m.mu.Lock()
		if m.c != nil {
			m.c.Close()
		}
		m.c, m.err = c, err
		close(m.changed)
		m.changed = make(chan struct{})
		m.mu.Unlock()
	}()
}

// client waits for the running qemu's QMP connection.
func (m *monitor) client(ctx context.Context) (*qmp.Client, error) {
	for {
		m.mu.Lock()
		c, err, changed := m.c, m.err, m.changed
		m.mu.Unlock()
		if c != nil || err != nil {
			return c, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("qemu's QMP socket: %w", ctx.Err())
		}
	}
}

func (m *monitor) close() {
	m.ln.Close()
	m.mu.Lock()
	if m.c != nil {
		m.c.Close()
	}
	m.mu.Unlock()
}
