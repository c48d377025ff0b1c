package vmmproc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/log"
	"github.com/hashicorp/yamux"

	"github.com/msb-dev/msb/protocol"
)

// listenUnix listens on path after making its directory. A socket file left
// by a dead VMM is replaced; one that still answers is an error, so two VMMs
// never fight over a name.
func listenUnix(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is in use by a running VMM", path)
	}
	_ = os.Remove(path)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// relay serves the agent socket: every client connection becomes one yamux
// stream to the guest, copied both ways with half-close passed through, so
// a client's EOF reaches the guest and the guest's EOF reaches the client.
// A connection whose header names a kind in local (vmm.KindMemory) is the
// VMM's own to answer and never reaches the guest.
func relay(l *net.UnixListener, sess *yamux.Session, local map[string]func(net.Conn)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.L.WithError(err).Warn("relay accept")
			}
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			relayOne(c, sess, local)
		}()
	}
}

// relayOne reads c's header and serves it: the VMM itself for a local
// kind, else a new guest stream that gets the header and then c's bytes.
func relayOne(c *net.UnixConn, sess *yamux.Session, local map[string]func(net.Conn)) {
	kind, arg, err := protocol.ReadHeader(c)
	if err != nil {
		c.Close()
		return
	}
	if serve, ok := local[kind]; ok {
		serve(c)
		c.Close()
		return
	}
	s, err := sess.OpenStream()
	if err != nil {
		if !sess.IsClosed() {
			log.L.WithError(err).Warn("relay: open guest stream")
		}
		c.Close()
		return
	}
	if err := protocol.WriteHeader(s, kind, arg); err != nil {
		s.Close()
		c.Close()
		return
	}
	splice(c, s)
}

func splice(c *net.UnixConn, s *yamux.Stream) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(s, c)
		_ = s.Close() // FIN: the guest reads EOF, and can still write back
		close(done)
	}()
	_, _ = io.Copy(c, s)
	_ = c.CloseWrite()
	<-done
	_ = c.Close()
}
