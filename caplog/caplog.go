// Package caplog keeps the logs a guest can fill (its console, what it
// makes qemu print) under a cap: a guest can write without end, and a
// VM's state dir is usually on a tmpfs (host RAM). When a log would pass
// its cap it is cut to its newest half, behind a line that says so;
// readers only ever want the tail (why a VM died).
package caplog

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

// DefaultMax is a log's cap when none is given: the console log's when
// the launch config sets none.
const DefaultMax = 4 << 20

// File is a file kept under max bytes by dropping its oldest half.
type File struct {
	mu   sync.Mutex
	f    *os.File
	size int64
	max  int64
}

// Open creates or truncates the log at path, capped at max bytes
// (DefaultMax if max <= 0).
func Open(path string, max int64) (*File, error) {
	if max <= 0 {
		max = DefaultMax
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return &File{f: f, max: max}, nil
}

// Write appends p, cutting the log first when p would pass the cap.
func (c *File) Write(p []byte) (int, error) {
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
func (c *File) cut() error {
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

// Close closes the log file.
func (c *File) Close() error { return c.f.Close() }

// Pipe opens the log at path, capped at max, and returns the write end
// of a pipe copied into it, for processes to write to (every qemu
// started, a TCG fallback's too); the copy ends when the last write end
// is closed (the caller's, at closeFn).
func Pipe(path string, max int64) (w *os.File, closeFn func(), err error) {
	out, err := Open(path, max)
	if err != nil {
		return nil, nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		out.Close()
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer r.Close()
		if _, err := io.Copy(out, r); err != nil {
			log.L.WithError(err).Warnf("log %s", path)
		}
	}()
	return w, func() {
		w.Close()
		select { // a process qemu left behind may hold the pipe open
		case <-done:
			out.Close()
		case <-time.After(2 * time.Second):
		}
	}, nil
}

// Console copies every connection the hypervisor makes to its listener
// (one per qemu started: a TCG fallback reconnects) into a capped log:
// the guest console (kernel and agent messages).
type Console struct {
	ln  *net.UnixListener
	out *File
	// copied is closed once the latest connection's output is all in
	// the log (the hypervisor closed it).
	copied atomic.Pointer[chan struct{}]
}

// ServeConsole copies what connects to ln into the log at logPath,
// capped at max; it owns ln from then on, and closes it on error.
func ServeConsole(ln *net.UnixListener, logPath string, max int64) (*Console, error) {
	out, err := Open(logPath, max)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("console log: %w", err)
	}
	s := &Console{ln: ln, out: out}
	go s.serve()
	return s, nil
}

func (s *Console) serve() {
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

// Drained waits (at most d) until the hypervisor's output is all in the
// log, so a reader of the log after the hypervisor exited sees its end.
func (s *Console) Drained(d time.Duration) {
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
func (s *Console) Close() {
	if s == nil {
		return
	}
	s.ln.Close()
	s.Drained(2 * time.Second)
	s.out.Close()
}
