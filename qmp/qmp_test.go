package qmp

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRealQEMU talks to a real, paused qemu: the greeting, a command's
// return, a refused command, and a file passed with getfd.
func TestRealQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("no qemu-system-x86_64")
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(bin, "-machine", "microvm", "-nodefaults", "-no-user-config", "-nographic", "-S",
		"-accel", "tcg", "-chardev", "socket,id=qmp,path="+sock, "-mon", "chardev=qmp,mode=control")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	_ = ln.SetDeadline(time.Now().Add(30 * time.Second))
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := New(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "prelaunch" || st.Running {
		t.Fatalf("query-status = %+v, want prelaunch, not running", st)
	}
	var qe *Error
	if err := c.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v, want a CommandNotFound Error", err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": "x"}, nil, f); err != nil {
		t.Fatalf("getfd with a file: %v", err)
	}
	if err := c.Execute(ctx, "getfd", map[string]string{"fdname": "y"}, nil); err == nil {
		t.Fatal("getfd without a file succeeded")
	}
}

// fakeQEMU answers on the other end of a socket pair with lines.
func fakeQEMU(t *testing.T, lines ...string) *net.UnixConn {
	t.Helper()
	a, b := unixPair(t)
	go func() {
		defer b.Close()
		r := bufio.NewReader(b)
		w := bufio.NewWriter(b)
		for _, l := range lines {
			if l == "<read>" {
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				continue
			}
			_, _ = w.WriteString(l)
			_ = w.Flush()
		}
		_, _ = r.ReadString('\n') // hold the line open until the client is done
	}()
	return a
}

func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

const greeting = `{"QMP": {"version": {}, "capabilities": []}}` + "\n"

// TestEventsSkipped: events between a command and its return are not
// taken for the return.
func TestEventsSkipped(t *testing.T) {
	conn := fakeQEMU(t, greeting, "<read>", `{"return": {}}`+"\n",
		"<read>", `{"event": "STOP", "timestamp": {}}`+"\n", `{"return": {"status": "paused"}}`+"\n")
	ctx := context.Background()
	c, err := New(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Status string }
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "paused" {
		t.Fatalf("got %+v, %v", st, err)
	}
	// The STOP event skipped above is kept for WaitEvent.
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if ev, err := c.WaitEvent(short, "STOP", nil); err != nil || ev.Name != "STOP" {
		t.Fatalf("WaitEvent(STOP) = %+v, %v", ev, err)
	}
	if _, err := c.WaitEvent(short, "STOP", nil); err == nil {
		t.Fatal("a kept event was returned twice")
	}
}

// TestHostileReplies: a reply that is no greeting, an endless line, and
// silence end in errors, never a hang or an unbounded read.
func TestHostileReplies(t *testing.T) {
	ctx := context.Background()
	if _, err := New(ctx, fakeQEMU(t, `{"hello": 1}`+"\n")); err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
		t.Fatalf("bad greeting: %v", err)
	}
	huge := strings.Repeat("x", maxLine+10) + "\n"
	if _, err := New(ctx, fakeQEMU(t, huge)); err == nil || !strings.Contains(err.Error(), "over") {
		t.Fatalf("oversize line: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := New(short, fakeQEMU(t)); err == nil {
		t.Fatal("silent qemu: no error")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("silent qemu: waited %s past the deadline", time.Since(start))
	}
}
