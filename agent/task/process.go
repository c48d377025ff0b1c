package task

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/hashicorp/yamux"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/protocol"
)

type procState int

const (
	stateCreated procState = iota // runc create / exec registered, not started
	stateRunning                  // started (or exited with output still draining)
	stateStopped                  // exited and all output delivered
)

// process is a container's init process or one exec process.
type process struct {
	svc    *Service
	cid    string
	execID string         // "" for the init process
	spec   *specs.Process // exec processes only
	tty    bool           // runs on a pty (console.go)

	// The stdio URIs as the request named them, reported back by State.
	stdinURI, stdoutURI, stderrURI string
	streams                        *streamSet
	stdinS, stdoutS, stderrS       net.Conn

	mu         sync.Mutex
	state      procState
	pid        int
	exitStatus int
	exitedAt   time.Time
	exitSeen   bool
	starting   bool // an exec's Start is running runc exec
	// master is a terminal process's pty master once runc sent it;
	// winsize a size asked for before that.
	master  *os.File
	winsize *unix.Winsize

	pio       *pipeIO
	stdinOnce sync.Once
	stdinDone chan struct{} // closed when the stdin copy ended (nil: no stdin stream)
	outs      []*outCopier
	// done is closed once the process has exited, all of its output is in
	// its streams and the streams are closed. Nothing reports the exit
	// before that.
	done chan struct{}
}

func newProcess(svc *Service, cid, execID string) *process {
	return &process{svc: svc, cid: cid, execID: execID, done: make(chan struct{})}
}

func (p *process) name() string {
	if p.execID == "" {
		return p.cid
	}
	return p.cid + "/" + p.execID
}

// openStreams claims the stdio streams the URIs name.
func (p *process) openStreams(ctx context.Context, stdin, stdout, stderr string) error {
	p.stdinURI, p.stdoutURI, p.stderrURI = stdin, stdout, stderr
	p.streams = &streamSet{refs: map[net.Conn]int{}}
	byToken := map[string]net.Conn{}
	get := func(what, uri string) (net.Conn, error) {
		if uri == "" {
			return nil, nil
		}
		tok, err := parseStdioURI(what, uri)
		if err != nil {
			return nil, err
		}
		if c, ok := byToken[tok]; ok {
			p.streams.acquire(c)
			return c, nil
		}
		c, err := p.svc.stdio.take(ctx, tok, p.svc.opts.StdioWait)
		if err != nil {
			return nil, err
		}
		byToken[tok] = c
		p.streams.acquire(c)
		return c, nil
	}
	var err error
	if p.stdinS, err = get("stdin", stdin); err == nil {
		if p.stdoutS, err = get("stdout", stdout); err == nil {
			p.stderrS, err = get("stderr", stderr)
		}
	}
	if err != nil {
		p.streams.closeAll()
		return err
	}
	return nil
}

// newIO makes the pipes runc hands to the process, owned by uid:gid. A
// terminal process gets none: its stdio is the pty (all of runc's own
// stdio is /dev/null then).
func (p *process) newIO(uid, gid int) (*pipeIO, error) {
	if p.tty {
		return newPipeIO(uid, gid, false, false, false)
	}
	return newPipeIO(uid, gid, p.stdinS != nil, p.stdoutS != nil, p.stderrS != nil)
}

// startCopy starts moving bytes between the pipes (or a terminal's pty
// master) and the streams once runc has started the process.
func (p *process) startCopy(pio *pipeIO, master *os.File) {
	p.pio = pio
	var in io.Writer
	outs := []struct {
		r io.ReadCloser
		w net.Conn
		n string
	}{{pio.Stdout(), p.stdoutS, "stdout"}, {pio.Stderr(), p.stderrS, "stderr"}}
	if master != nil {
		p.mu.Lock()
		p.master = master
		ws := p.winsize
		p.mu.Unlock()
		if ws != nil {
			if err := setWinsize(master, *ws); err != nil {
				log.L.WithError(err).Warnf("%s: set terminal size", p.name())
			}
		}
		in = master
		// The pty is drained even without a stdout stream: a process
		// must not block on a full terminal.
		outs = outs[:1]
		outs[0].r, outs[0].n = master, "terminal"
		p.streams.release(p.stderrS) // unused with a terminal
	} else if pio.Stdin() != nil {
		in = pio.Stdin()
	}
	if p.stdinS != nil && in != nil {
		p.stdinDone = make(chan struct{})
		go func() {
			defer close(p.stdinDone)
			_, err := io.Copy(in, p.stdinS)
			if err != nil && !isClosedErr(err) {
				log.L.WithError(err).Debugf("%s: stdin copy", p.name())
			}
			p.closeStdin()
			p.streams.release(p.stdinS)
		}()
	}
	for _, o := range outs {
		if o.r == nil || (o.w == nil && master == nil) {
			continue
		}
		c := &outCopier{r: o.r, w: o.w, name: p.name() + " " + o.n, done: make(chan struct{})}
		p.outs = append(p.outs, c)
		go c.run()
	}
}

// closeStdin closes the write end of the process's stdin pipe: the process
// reads EOF.
func (p *process) closeStdin() {
	p.stdinOnce.Do(func() {
		if p.pio != nil && p.pio.Stdin() != nil {
			p.pio.Stdin().Close()
		}
	})
}

// closeIO is CloseIO(stdin): the host has no more input. The stdin stream
// should have been half-closed by then; what it still carries is delivered
// first (up to a grace period), then the pipe is closed regardless.
func (p *process) closeIO(ctx context.Context) {
	if p.stdinDone != nil {
		t := time.NewTimer(2 * time.Second)
		defer t.Stop()
		select {
		case <-p.stdinDone:
		case <-t.C:
			log.L.Warnf("%s: CloseIO: stdin stream not half-closed within 2s: closing stdin anyway", p.name())
		case <-ctx.Done():
		}
	}
	p.closeStdin()
	if p.stdinS != nil {
		_ = p.stdinS.SetReadDeadline(time.Now())
	}
}

// abandonIO releases everything when the process never started.
func (p *process) abandonIO() {
	if p.pio != nil {
		p.pio.Close()
	}
	p.mu.Lock()
	if p.master != nil {
		p.master.Close()
	}
	p.mu.Unlock()
	if p.streams != nil {
		p.streams.closeAll()
	}
}

// setExited is called (once) by the exit tracker. It records the status and
// drains the output in the background; done closes after that.
func (p *process) setExited(e runc.Exit) {
	p.mu.Lock()
	if p.exitSeen {
		p.mu.Unlock()
		return
	}
	p.exitSeen = true
	p.exitStatus = e.Status
	p.exitedAt = e.Timestamp
	p.mu.Unlock()
	log.L.Debugf("%s: pid %d exited with status %d", p.name(), e.Pid, e.Status)
	go p.finish(e.Timestamp)
}

// finish waits for the output to be delivered, closes the streams, and only
// then makes the exit visible.
func (p *process) finish(exitedAt time.Time) {
	for _, c := range p.outs {
		c.drain(exitedAt, p.svc.opts.IODrainTimeout)
	}
	for _, c := range p.outs {
		p.streams.release(c.w)
	}
	p.closeStdin()
	p.mu.Lock()
	master := p.master
	p.mu.Unlock()
	if p.stdinDone != nil {
		_ = p.stdinS.SetReadDeadline(time.Now())
		if master != nil {
			_ = master.SetWriteDeadline(time.Now()) // a write into a full pty
		}
		<-p.stdinDone
	}
	if p.pio != nil {
		p.pio.Close()
	}
	if master != nil {
		master.Close()
	}
	// An OOM kill that ended the process is known before its exit.
	p.svc.checkOOM(p.cid)
	p.mu.Lock()
	p.state = stateStopped
	p.mu.Unlock()
	close(p.done)
}

// status returns the state, pid, exit status and exit time.
func (p *process) status() (procState, int, int, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.pid, p.exitStatus, p.exitedAt
}

func (p *process) isDone() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait blocks until done or ctx ends.
func (p *process) wait(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// outCopier copies one output pipe (or a pty master) into its stream; with
// no stream (w nil) the output is discarded. It tracks whether it is
// blocked reading the pipe, so the drain after exit can tell a silent pipe
// held open by a leftover process (give up after a timeout) from a slow
// reader on the host (backpressure: wait as long as it takes).
type outCopier struct {
	r    io.ReadCloser
	w    net.Conn
	name string
	done chan struct{}

	mu        sync.Mutex
	reading   bool
	readSince time.Time
}

func (c *outCopier) run() {
	defer close(c.done)
	buf := make([]byte, 64<<10)
	var werr error
	for {
		c.mu.Lock()
		c.reading, c.readSince = true, time.Now()
		c.mu.Unlock()
		n, err := c.r.Read(buf)
		c.mu.Lock()
		c.reading = false
		c.mu.Unlock()
		if n > 0 && werr == nil && c.w != nil {
			if _, werr = c.w.Write(buf[:n]); werr != nil {
				// Keep reading so the process never blocks on a full
				// pipe; the host closed the stream, nobody reads it.
				log.L.WithError(werr).Warnf("%s: stream closed by the host: discarding further output", c.name)
			}
		}
		if err != nil {
			// EIO: a pty master whose slave side is all closed.
			if !errors.Is(err, io.EOF) && !isClosedErr(err) && !errors.Is(err, unix.EIO) {
				log.L.WithError(err).Warnf("%s: read", c.name)
			}
			return
		}
	}
}

// drain waits for the copier to reach EOF. Once the process has exited, a
// pipe that stays silent for timeout (read blocked, no writer left that
// writes) is closed: some other process holds its write end.
func (c *outCopier) drain(exitedAt time.Time, timeout time.Duration) {
	for {
		wait := timeout
		c.mu.Lock()
		reading, since := c.reading, c.readSince
		c.mu.Unlock()
		if reading {
			if since.Before(exitedAt) {
				since = exitedAt
			}
			idle := time.Since(since)
			if idle >= timeout {
				log.L.Warnf("%s: no EOF %s after the process exited (a leftover process holds the pipe?): closing the stream", c.name, idle.Round(time.Millisecond))
				c.r.Close()
				<-c.done
				return
			}
			wait = timeout - idle
		}
		t := time.NewTimer(wait)
		select {
		case <-c.done:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// streamSet closes each stdio stream once every use of it (stdin, stdout,
// stderr may share one) is finished.
type streamSet struct {
	mu   sync.Mutex
	refs map[net.Conn]int
}

func (s *streamSet) acquire(c net.Conn) {
	s.mu.Lock()
	s.refs[c]++
	s.mu.Unlock()
}

func (s *streamSet) release(c net.Conn) {
	if c == nil {
		return
	}
	s.mu.Lock()
	n, ok := s.refs[c]
	if ok {
		n--
		if n <= 0 {
			delete(s.refs, c)
		} else {
			s.refs[c] = n
		}
	}
	s.mu.Unlock()
	if ok && n <= 0 {
		c.Close() // yamux: FIN after all data written
	}
}

func (s *streamSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.refs {
		c.Close()
		delete(s.refs, c)
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, yamux.ErrTimeout) || errors.Is(err, yamux.ErrStreamClosed)
}

func parseStdioURI(what, uri string) (string, error) {
	if tok, ok := protocol.ParseStreamURI(uri); ok {
		return tok, nil
	}
	return "", fmt.Errorf("%s %q: the agent only takes stream URIs (protocol.StreamURI) or \"\": %w", what, uri, errdefs.ErrInvalidArgument)
}
