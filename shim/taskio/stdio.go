package taskio

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"github.com/containerd/log"

	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
)

// URIs are a process's stdio as containerd names them.
type URIs struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// IO bridges a process's host stdio (fifos, a file:// log or a
// binary:// logger) to its streams to the guest: one relay connection per
// stream, copied with backpressure (a slow reader stalls the guest process,
// nothing is dropped). The agent closes a process's output streams after
// its last byte and before it reports the exit, so once the copies below
// finish every byte has been written to the host side.
//
// It is set up in two steps, as containerd's runc shim opens an exec's
// stdio only at Start: Dial opens the relay streams (the agent claims
// them in Create/Exec), Attach opens the host side and starts copying.
// A client may rely on the stdin fifo having no reader before Start:
// nerdctl `exec -i` installs its CloseIO callback only after Exec returns.
type IO struct {
	host  URIs // what the host side opens (a terminal's stderr dropped)
	guest URIs // the stream URIs the agent gets
	conns []*net.UnixConn
	// the streams' shim ends; nil for a stream the process does not have
	stdoutC, stderrC, stdinC *net.UnixConn
	attached                 bool
	outDone                  sync.WaitGroup
	// stdinKeep is the shim's own write end of the stdin fifo: while it is
	// open the copy does not see EOF when the client reopens the fifo;
	// CloseIO closes it, and the copy ends once the client's data is in.
	stdinKeep io.Closer
	stdinR    io.Closer
	sinks     []io.Closer // host outputs, closed once the copies end
	logger    *binaryLogger
	mu        sync.Mutex // guards attached, stdinKeep, stdinR, sinks, logger against closeHost
	closed    bool
	closeOnce sync.Once
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Open is Dial and Attach at once (init: its stdio is opened at
// Create, as runc's shim does). ctx bounds opening the fifos.
func Open(ctx context.Context, sock, id, namespace string, u URIs) (*IO, error) {
	p, err := Dial(ctx, sock, u)
	if err != nil {
		return nil, err
	}
	if err := p.Attach(ctx, id, namespace); err != nil {
		p.Abort()
		return nil, err
	}
	return p, nil
}

// Guest is the stdio to hand the agent: a stream URI for each stream the
// process has, and whether it has a terminal.
func (p *IO) Guest() URIs { return p.guest }

// outputURI parses the URI of a process's output (stdout's, else
// stderr's); nil when it has none.
func outputURI(u URIs) (*url.URL, error) {
	ref := u.Stdout
	if ref == "" {
		ref = u.Stderr
	}
	if ref == "" {
		return nil, nil
	}
	uri, err := url.Parse(ref)
	if err != nil {
		return nil, fmt.Errorf("stdout %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	switch uri.Scheme {
	case "", "fifo", "file", "binary", "binary-v2":
		return uri, nil
	}
	return nil, fmt.Errorf("stdio URI scheme %q: use a fifo path, file:// or binary://: %w", uri.Scheme, errdefs.ErrInvalidArgument)
}

// outputs reports which output streams a process with stdio u has. A
// terminal has one: the pty. containerd makes no stderr fifo for it, yet
// clients (nerdctl exec -it) still name one; runc's shim ignores it, and
// so does msb.
func outputs(u URIs) (stdout, stderr bool, err error) {
	uri, err := outputURI(u)
	switch {
	case err != nil || uri == nil:
		return false, false, err
	case uri.Scheme == "" || uri.Scheme == "fifo":
		return u.Stdout != "", u.Stderr != "" && !u.Terminal, nil
	}
	return true, !u.Terminal, nil // one file or logger takes both
}

// Dial opens one relay stream for each stdio stream the process has; the
// host side stays closed until Attach.
func Dial(ctx context.Context, sock string, u URIs) (_ *IO, retErr error) {
	if u.Terminal {
		u.Stderr = ""
	}
	hasOut, hasErr, err := outputs(u)
	if err != nil {
		return nil, err
	}
	p := &IO{host: u, guest: URIs{Terminal: u.Terminal}}
	defer func() {
		if retErr != nil {
			p.Abort()
		}
	}()
	dial := func(want bool, uri *string) (*net.UnixConn, error) {
		if !want {
			return nil, nil
		}
		tok := newToken()
		c, err := vmm.DialAgent(ctx, sock, protocol.KindStdio, tok)
		if err != nil {
			return nil, err
		}
		p.conns = append(p.conns, c)
		*uri = protocol.StreamURI(tok)
		return c, nil
	}
	if p.stdoutC, err = dial(hasOut, &p.guest.Stdout); err != nil {
		return nil, err
	}
	if p.stderrC, err = dial(hasErr, &p.guest.Stderr); err != nil {
		return nil, err
	}
	if p.stdinC, err = dial(u.Stdin != "", &p.guest.Stdin); err != nil {
		return nil, err
	}
	for _, c := range []*net.UnixConn{p.stdoutC, p.stderrC} {
		if c != nil {
			_ = c.CloseWrite() // the shim never writes to an output stream
		}
	}
	return p, nil
}

// Attach opens the host side of the process's stdio and starts copying;
// a second call does nothing. On error the caller aborts p.
func (p *IO) Attach(ctx context.Context, id, namespace string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.attached || p.closed {
		return nil
	}
	p.attached = true
	stdout, stderr, err := p.openSinks(ctx, id, namespace, p.host)
	if err != nil {
		return err
	}
	for _, o := range []struct {
		w io.Writer
		c *net.UnixConn
	}{{stdout, p.stdoutC}, {stderr, p.stderrC}} {
		if o.w == nil || o.c == nil {
			continue
		}
		p.outDone.Add(1)
		go func(w io.Writer, c *net.UnixConn) {
			defer p.outDone.Done()
			buf := make([]byte, 32<<10)
			if _, err := io.CopyBuffer(w, c, buf); err != nil && !errors.Is(err, net.ErrClosed) {
				log.G(ctx).WithError(err).Warnf("%s: copying output", id)
			}
		}(o.w, o.c)
	}
	if p.stdinC != nil {
		stdin := p.host.Stdin
		r, err := fifo.OpenFifo(context.WithoutCancel(ctx), stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open stdin fifo %s: %w", stdin, err)
		}
		p.stdinR = r
		w, err := fifo.OpenFifo(context.WithoutCancel(ctx), stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open stdin fifo %s: %w", stdin, err)
		}
		p.stdinKeep = w
		go func(c *net.UnixConn) {
			buf := make([]byte, 32<<10)
			_, _ = io.CopyBuffer(c, r, buf)
			_ = c.CloseWrite() // EOF for the process
		}(p.stdinC)
	}
	return nil
}

// openSinks opens the host side of stdout and stderr; nil means none.
func (p *IO) openSinks(ctx context.Context, id, namespace string, u URIs) (stdout, stderr io.Writer, err error) {
	uri, err := outputURI(u)
	if err != nil || uri == nil {
		return nil, nil, err
	}
	switch uri.Scheme {
	case "", "fifo":
		if stdout, err = p.openPath(ctx, u.Stdout); err != nil {
			return nil, nil, err
		}
		if stderr, err = p.openPath(ctx, u.Stderr); err != nil {
			return nil, nil, err
		}
		return stdout, stderr, nil
	case "file":
		if err := os.MkdirAll(filepath.Dir(uri.Path), 0o755); err != nil {
			return nil, nil, err
		}
		open := func() (*os.File, error) {
			return os.OpenFile(uri.Path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		}
		var fo, fe *os.File
		if fo, err = open(); err != nil {
			return nil, nil, fmt.Errorf("log file: %w", err)
		}
		p.sinks = append(p.sinks, fo)
		if fe, err = open(); err != nil {
			return nil, nil, fmt.Errorf("log file: %w", err)
		}
		p.sinks = append(p.sinks, fe)
		return fo, fe, nil
	case "binary", "binary-v2":
		l, err := startBinaryLogger(ctx, id, namespace, uri)
		if err != nil {
			return nil, nil, err
		}
		p.logger = l
		return l.stdout, l.stderr, nil
	}
	return nil, nil, nil // outputURI admits no other scheme
}

// openPath opens a fifo (as runc's shim does: both ends, so the write side
// never fails for want of a reader) or a plain file for appending.
func (p *IO) openPath(ctx context.Context, path string) (io.Writer, error) {
	if path == "" {
		return nil, nil
	}
	if ok, err := fifo.IsFifo(path); err != nil {
		return nil, fmt.Errorf("stdio %s: %w", path, err)
	} else if !ok {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nil, fmt.Errorf("stdio %s: %w", path, err)
		}
		p.sinks = append(p.sinks, f)
		return f, nil
	}
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo %s for writing: %w", path, err)
	}
	p.sinks = append(p.sinks, w)
	r, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo %s for reading: %w", path, err)
	}
	p.sinks = append(p.sinks, r)
	return w, nil
}

// CloseStdin is CloseIO: the process sees EOF once what the client wrote
// has been passed on.
func (p *IO) CloseStdin() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdinKeep != nil {
		p.stdinKeep.Close()
	}
}

// Finish waits until all output has reached the host side (at most wait;
// a negative wait means no bound), closes the host side, and gives a
// binary logger EOF and a moment to write out what it has. It is what a
// process's exit waits for before it is reported.
func (p *IO) Finish(wait time.Duration) {
	done := make(chan struct{})
	go func() {
		p.outDone.Wait()
		close(done)
	}()
	if wait < 0 {
		<-done
	} else {
		select {
		case <-done:
		case <-time.After(wait):
			log.L.Warnf("output copy still blocked after %s: closing it", wait)
		}
	}
	p.closeHost()
	if p.logger != nil {
		p.logger.closeInput()
		p.logger.wait(loggerDrainTimeout)
	}
}

// closeHost closes the streams and the host files and fifos.
func (p *IO) closeHost() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.closed = true
		for _, c := range p.conns {
			c.Close()
		}
		if p.stdinKeep != nil {
			p.stdinKeep.Close()
		}
		if p.stdinR != nil {
			p.stdinR.Close()
		}
		for _, s := range p.sinks {
			s.Close()
		}
	})
}

// Abort closes everything now and ends a binary logger (process deleted,
// or setting up failed).
func (p *IO) Abort() {
	p.closeHost()
	if p.logger != nil {
		p.logger.terminate()
	}
}
