package taskio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/fifo"

	"github.com/msb-dev/msb/protocol"
)

// fakeRelay stands in for a VM's relay socket: it takes stdio streams by
// token, as the guest agent does.
type fakeRelay struct {
	sock string
	mu   sync.Mutex
	cond *sync.Cond
	byTk map[string]*net.UnixConn
}

func newFakeRelay(t *testing.T) *fakeRelay {
	r := &fakeRelay{sock: filepath.Join(t.TempDir(), "relay.sock"), byTk: map[string]*net.UnixConn{}}
	r.cond = sync.NewCond(&r.mu)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: r.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			kind, tok, err := protocol.ReadHeader(c)
			if err != nil || kind != protocol.KindStdio {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.byTk[tok] = c
			r.cond.Broadcast()
			r.mu.Unlock()
		}
	}()
	return r
}

// stream is the guest's end of the stream a URI names.
func (r *fakeRelay) stream(t *testing.T, uri string) *net.UnixConn {
	t.Helper()
	tok, ok := protocol.ParseStreamURI(uri)
	if !ok {
		t.Fatalf("not a stream URI: %q", uri)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.byTk[tok] == nil {
		r.cond.Wait()
	}
	return r.byTk[tok]
}

func testCtx() context.Context {
	return namespaces.WithNamespace(context.Background(), "test")
}

func mkfifo(t *testing.T, dir, name string) string {
	p := filepath.Join(dir, name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFifoIO: output reaches the client's fifos in full before finish
// returns; stdin reaches the guest, and EOF only after CloseIO and the
// client closing its end.
func TestFifoIO(t *testing.T) {
	relay := newFakeRelay(t)
	dir := t.TempDir()
	in, out, errp := mkfifo(t, dir, "in"), mkfifo(t, dir, "out"), mkfifo(t, dir, "err")
	ctx := testCtx()
	// The client (ctr) opens its ends first.
	outR, err := fifo.OpenFifo(ctx, out, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	errR, err := fifo.OpenFifo(ctx, errp, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	inW, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Open(ctx, relay.sock, "c1", "test", URIs{Stdin: in, Stdout: out, Stderr: errp})
	if err != nil {
		t.Fatal(err)
	}
	gOut, gErr, gIn := relay.stream(t, p.guest.Stdout), relay.stream(t, p.guest.Stderr), relay.stream(t, p.guest.Stdin)

	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: more than any buffer on the way
	var got []byte
	readDone := make(chan struct{})
	go func() {
		got, _ = io.ReadAll(outR)
		close(readDone)
	}()
	var gotErr []byte
	errDone := make(chan struct{})
	go func() {
		gotErr, _ = io.ReadAll(errR)
		close(errDone)
	}()
	go func() {
		_, _ = gOut.Write(payload)
		gOut.Close() // the agent closes a stream after the last byte
		_, _ = gErr.Write([]byte("oops\n"))
		gErr.Close()
	}()

	// stdin: the client writes and closes; the guest must not see EOF
	// before CloseIO.
	if _, err := inW.Write([]byte("input\n")); err != nil {
		t.Fatal(err)
	}
	inW.Close()
	buf := make([]byte, 64)
	n, err := gIn.Read(buf)
	if err != nil || string(buf[:n]) != "input\n" {
		t.Fatalf("guest stdin read %q, %v", buf[:n], err)
	}
	_ = gIn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := gIn.Read(buf); !os.IsTimeout(err) {
		t.Fatalf("guest stdin before CloseIO: %v, want no EOF yet", err)
	}
	_ = gIn.SetReadDeadline(time.Time{})
	p.CloseStdin()
	if rest, err := io.ReadAll(gIn); err != nil || len(rest) != 0 {
		t.Fatalf("guest stdin after CloseIO: %q, %v", rest, err)
	}

	p.Finish(-1)
	<-readDone
	<-errDone
	if !bytes.Equal(got, payload) || string(gotErr) != "oops\n" {
		t.Fatalf("client got %d of %d bytes of stdout, stderr %q", len(got), len(payload), gotErr)
	}
}

// TestFileIO: file:// appends stdout and stderr to one file.
func TestFileIO(t *testing.T) {
	relay := newFakeRelay(t)
	log := filepath.Join(t.TempDir(), "sub", "c.log")
	p, err := Open(testCtx(), relay.sock, "c1", "test", URIs{Stdout: "file://" + log, Stderr: "file://" + log})
	if err != nil {
		t.Fatal(err)
	}
	gOut, gErr := relay.stream(t, p.guest.Stdout), relay.stream(t, p.guest.Stderr)
	_, _ = gOut.Write([]byte("out\n"))
	gOut.Close()
	_, _ = gErr.Write([]byte("err\n"))
	gErr.Close()
	p.Finish(-1)
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); len(s) != 8 || !strings.Contains(s, "out\n") || !strings.Contains(s, "err\n") {
		t.Fatalf("log %q", s)
	}
}

// TestBinaryIO: a binary:// logger gets the streams on fds 3 and 4, and
// Finish returns after it has written them out.
func TestBinaryIO(t *testing.T) {
	relay := newFakeRelay(t)
	dir := t.TempDir()
	logger := filepath.Join(dir, "logger")
	script := "#!/bin/sh\nexec 5>&-\n/bin/cat <&3 >\"$2.out\" &\n/bin/cat <&4 >\"$2.err\" &\nwait\necho \"$CONTAINER_ID $CONTAINER_NAMESPACE\" >\"$2.env\"\n"
	if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(dir, "x")
	uri := "binary://" + logger + "?dest=" + prefix
	p, err := Open(testCtx(), relay.sock, "c1", "test", URIs{Stdout: uri, Stderr: uri})
	if err != nil {
		t.Fatal(err)
	}
	gOut, gErr := relay.stream(t, p.guest.Stdout), relay.stream(t, p.guest.Stderr)
	payload := bytes.Repeat([]byte("x"), 3<<20)
	go func() {
		_, _ = gOut.Write(payload)
		gOut.Close()
		_, _ = gErr.Write([]byte("e\n"))
		gErr.Close()
	}()
	p.Finish(-1)
	out, _ := os.ReadFile(prefix + ".out")
	errb, _ := os.ReadFile(prefix + ".err")
	env, _ := os.ReadFile(prefix + ".env")
	if len(out) != len(payload) || string(errb) != "e\n" || string(env) != "c1 test\n" {
		t.Fatalf("logger wrote %d of %d bytes, stderr %q, env %q", len(out), len(payload), errb, env)
	}
	p.Abort()
}

func TestBadStdioURI(t *testing.T) {
	relay := newFakeRelay(t)
	if _, err := Open(testCtx(), relay.sock, "c1", "test", URIs{Stdout: "tcp://x"}); err == nil || !strings.Contains(err.Error(), "tcp") {
		t.Fatalf("want an error naming the scheme, got %v", err)
	}
	if _, err := Open(testCtx(), relay.sock, "c1", "test", URIs{Stdout: "binary:///nonexistent/logger"}); err == nil {
		t.Fatal("a missing logger must fail")
	}
}

// TestTerminalIgnoresStderr: with a terminal, containerd makes no stderr
// fifo but nerdctl `exec -it` still names one; like runc's shim, the stderr
// path is not opened and the guest gets no stderr stream.
func TestTerminalIgnoresStderr(t *testing.T) {
	relay := newFakeRelay(t)
	dir := t.TempDir()
	out := mkfifo(t, dir, "out")
	ctx := testCtx()
	outR, err := fifo.OpenFifo(ctx, out, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "never-created-stderr")
	p, err := Open(ctx, relay.sock, "c1", "test", URIs{Stdout: out, Stderr: missing, Terminal: true})
	if err != nil {
		t.Fatalf("terminal with a stderr path that does not exist: %v", err)
	}
	if p.guest.Stderr != "" || p.guest.Stdout == "" || !p.guest.Terminal {
		t.Fatalf("guest stdio %+v: want stdout and terminal, no stderr", p.guest)
	}
	gOut := relay.stream(t, p.guest.Stdout)
	_, _ = gOut.Write([]byte("pty\n"))
	gOut.Close()
	p.Finish(-1)
	if b, _ := io.ReadAll(outR); string(b) != "pty\n" {
		t.Fatalf("stdout %q", b)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("stderr path was created: %v", err)
	}
}

// TestExecStdinOpenedAtAttach: an exec's stdin fifo has no reader between
// Exec (Dial) and Start (Attach), as with runc's shim: a client's write
// blocks until Start, so nerdctl reads its stdin's EOF only once it can
// send CloseIO.
func TestExecStdinOpenedAtAttach(t *testing.T) {
	relay := newFakeRelay(t)
	dir := t.TempDir()
	in := mkfifo(t, dir, "in")
	ctx := testCtx()
	p, err := Dial(ctx, relay.sock, URIs{Stdin: in})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	gIn := relay.stream(t, p.guest.Stdin) // the agent can claim it at Exec
	if f, err := os.OpenFile(in, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		f.Close()
		t.Fatal("stdin fifo has a reader before Start")
	} else if !errors.Is(err, syscall.ENXIO) {
		t.Fatalf("open stdin fifo before Start: %v, want ENXIO (no reader)", err)
	}
	if err := p.Attach(ctx, "c1", "test"); err != nil {
		t.Fatal(err)
	}
	// containerd/fifo opens in the background: poll for the reader.
	var w *os.File
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if w, err = os.OpenFile(in, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stdin fifo after Start: %v", err)
		}
	}
	_, _ = w.Write([]byte("x"))
	w.Close()
	p.CloseStdin()
	if b, err := io.ReadAll(gIn); err != nil || string(b) != "x" {
		t.Fatalf("guest stdin %q, %v", b, err)
	}
}
