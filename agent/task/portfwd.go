package task

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"

	"github.com/containerd/log"
	"github.com/vishvananda/netns"

	"github.com/msb-dev/msb/protocol"
)

// ForwardPort serves a "port <id>/<n>" stream: it connects to port n on
// the loopback of container id's network namespace (the pod's, for a
// sandbox) and copies both ways until both sides are done.
func (s *Service) ForwardPort(st net.Conn, arg string) {
	defer st.Close()
	conn, err := s.dialLoopback(arg)
	if aerr := protocol.AnswerPort(st, err); err != nil || aerr != nil {
		if conn != nil {
			conn.Close()
		}
		log.L.WithError(err).Debugf("port stream %q", arg)
		return
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(conn, st)
		_ = conn.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(st, conn)
	if cw, ok := st.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		_ = st.Close() // a yamux stream's Close is its half-close (FIN)
	}
	<-done
}

// dialLoopback connects to 127.0.0.1 (else ::1) port n inside container
// id's network namespace, as containerd's CRI does on a runc host.
func (s *Service) dialLoopback(arg string) (net.Conn, error) {
	id, port, err := protocol.ParsePortArg(arg)
	if err != nil {
		return nil, err
	}
	c, err := s.getContainer(id)
	if err != nil {
		return nil, err
	}
	_, pid, _, _ := c.init.status()
	if pid == 0 {
		return nil, fmt.Errorf("container %s has no running init process", id)
	}
	target, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("container %s's network namespace: %w", id, err)
	}
	defer target.Close()
	var conn net.Conn
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		p := strconv.Itoa(port)
		conn, err = net.Dial("tcp4", net.JoinHostPort("127.0.0.1", p))
		if err != nil {
			var err6 error
			if conn, err6 = net.Dial("tcp6", net.JoinHostPort("::1", p)); err6 == nil {
				err = nil
			}
		}
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread() // else the thread ends with us
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return conn, nil
}
