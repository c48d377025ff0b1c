package vmmproc

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
)

// The guest console (kernel and agent messages) goes through the VMM
// into console.log, capped: a guest can write without end, and the state
// dir is usually on a tmpfs (host RAM). When the log would pass its cap it
// is cut to its newest half, behind a line that says so; readers only
// ever want the tail (why a VM died).

// DefaultConsoleLogMax is the console log's cap when the config sets none.
const DefaultConsoleLogMax = 4 << 20

// cappedLog is a file kept under max bytes by dropping its oldest half.
type cappedLog struct {
	mu   sync.Mutex
	f    *os.File
	size int64
	max  int64
}

func openCappedLog(path string, max int64) (*cappedLog, error) {
	if max <= 0 {
		max = DefaultConsoleLogMax
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return &cappedLog{f: f, max: max}, nil
}

func (c *cappedLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(p)
	if int64(len(p)) > c.max/2 { // a single write bigger than what is kept
		p = p[int64(len(p))-c.max/2:]
	}
	if c.size+int64(len(p)) > c.max {
		if err := c.cut(); err != nil {
			return 0, err
		}
	}
	w, err := c.f.WriteAt(p, c.size)
	c.size += int64(w)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// cut keeps the newest max/2 bytes minus room for the marker, from a line
// start, behind a marker line.
func (c *cappedLog) cut() error {
	keep := c.max/2 - 128
	buf := make([]byte, keep)
	r, err := c.f.ReadAt(buf, c.size-keep)
	if err != nil && err != io.EOF {
		return err
	}
	buf = buf[:r]
	for i, b := range buf { // start at a line
		if b == '\n' {
			buf = buf[i+1:]
			break
		}
	}
	marker := fmt.Sprintf("msb-vmm: console log over %d bytes: older lines dropped\n", c.max)
	out := append([]byte(marker), buf...)
	if _, err := c.f.WriteAt(out, 0); err != nil {
		return err
	}
	c.size = int64(len(out))
	return c.f.Truncate(c.size)
}

func (c *cappedLog) Close() error { return c.f.Close() }

// consoleServer copies every connection the hypervisor makes to its
// listener (one per qemu started: a TCG fallback reconnects) into the
// capped log.
type consoleServer struct {
	ln  *net.UnixListener
	out *cappedLog
	// copied is closed once the latest connection's output is all in
	// the log (the hypervisor closed it).
	copied atomic.Pointer[chan struct{}]
}

func startConsole(sock, logPath string, max int64) (*consoleServer, error) {
	out, err := openCappedLog(logPath, max)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	ln, err := listenUnix(sock)
	if err != nil {
		out.Close()
		return nil, err
	}
	s := &consoleServer{ln: ln, out: out}
	go s.serve()
	return s, nil
}

func (s *consoleServer) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		done := make(chan struct{})
		s.copied.Store(&done)
		if _, err := io.Copy(s.out, c); err != nil {
			log.L.WithError(err).Warn("console log")
		}
		c.Close()
		close(done)
	}
}

// drained waits (at most d) until the hypervisor's output is all in the
// log, so a reader of the log after the hypervisor exited sees its end.
func (s *consoleServer) drained(d time.Duration) {
	if s == nil {
		return
	}
	if ch := s.copied.Load(); ch != nil {
		select {
		case <-*ch:
		case <-time.After(d):
		}
	}
}

// Close stops accepting; the log stays open for a connection still
// being copied until that one ends.
func (s *consoleServer) Close() {
	if s == nil {
		return
	}
	s.ln.Close()
	s.drained(2 * time.Second)
	s.out.Close()
}
