package agent

import (
	"net"
	"sync"
)

// chanListener is a net.Listener fed by the stream dispatcher: every yamux
// stream whose header says "ttrpc" is handed to the one ttrpc server through
// it.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

func newChanListener() *chanListener {
	return &chanListener{
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
		addr:  chanAddr{},
	}
}

// Accept implements net.Listener.
func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr implements net.Listener.
func (l *chanListener) Addr() net.Addr { return l.addr }

// push hands c to Accept; it fails (and closes c) once the listener is
// closed.
func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		c.Close()
		return false
	}
}

type chanAddr struct{}

func (chanAddr) Network() string { return "msb-stream" }
func (chanAddr) String() string  { return "msb-agent" }
