package e2e

// Terminals, metrics and OOM events through containerd and msb's shim.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ptyOutput collects what a process under a test pty writes.
type ptyOutput struct {
	master console.Console
	mu     sync.Mutex
	buf    bytes.Buffer
	done   chan struct{}
}

// startOnPty starts cmd (ctr) with a new pty of rows×cols as its
// controlling terminal and stdio, as a user's terminal would be.
func startOnPty(t *testing.T, cmd *exec.Cmd, rows, cols uint16) *ptyOutput {
	t.Helper()
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	if err := master.Resize(console.WinSize{Height: rows, Width: cols}); err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	o := &ptyOutput{master: master, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		b := make([]byte, 4096)
		for {
			n, err := master.Read(b)
			o.mu.Lock()
			o.buf.Write(b[:n])
			o.mu.Unlock()
			if err != nil {
				return // EIO: ctr and its children closed the slave
			}
		}
	}()
	return o
}

// text is the output so far without CRs (the guest's pty and the test's
// both turn LF into CRLF).
func (o *ptyOutput) text() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.ReplaceAll(o.buf.String(), "\r", "")
}

func (o *ptyOutput) waitFor(t *testing.T, re *regexp.Regexp, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !re.MatchString(o.text()) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal output: no %v after %s; got %q", re, d, o.text())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// all waits for ctr's end of the pty and returns the output.
func (o *ptyOutput) all(t *testing.T) string {
	t.Helper()
	select {
	case <-o.done:
	case <-time.After(10 * time.Second):
		t.Errorf("pty not closed 10s after ctr exited")
	}
	return o.text()
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// waitSize is shell that waits (up to 10 s) until the terminal is rows
// cols: ctr sends its size only after Start.
func waitSize(size string) string {
	return `i=0; until [ "$(stty size 2>/dev/null)" = "` + size + `" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done; `
}

var ptsLine = regexp.MustCompile(`(?m)^/dev/pts/\d+$`)

// TestShimTerminal: `ctr run -t` gives the container a pty in the guest
// with the size of ctr's terminal, and passes its exit code.
func TestShimTerminal(t *testing.T) {
	e := startShimEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.CtrCmd(ctx, "run", "--rm", "-t", "--runtime", msbRuntimeType, e.image, "tty",
		"sh", "-c", "tty; "+waitSize("33 101")+`echo "size:$(stty size)"; exit 3`)
	out := startOnPty(t, cmd, 33, 101)
	code := exitCode(t, cmd.Wait())
	got := out.all(t)
	if code != 3 || !ptsLine.MatchString(got) || !strings.Contains(got, "size:33 101\n") {
		t.Fatalf("ctr run -t: exit %d (want 3), output %q (want a /dev/pts path and size:33 101)", code, got)
	}
}

// TestShimExecTerminalMetrics: `ctr task exec -t` in a running container
// follows a resize of ctr's terminal and takes input through it; `ctr task
// metrics` shows the container's memory and pids from the guest.
func TestShimExecTerminalMetrics(t *testing.T) {
	e := startShimEnv(t)
	const id = "tx"
	e.startDetached(t, id, "sh", "-c", "sleep 1000 & sleep 1000 & wait")
	defer e.remove(t, id)
	e.waitStatus(t, id, "RUNNING", time.Minute)

	// sh and its two sleeps, once sh has started them.
	var m string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		m = e.MustCtr("task", "metrics", id)
		mem := regexp.MustCompile(`(?m)^memory\.usage(?:_in_bytes)?\s+(\d+)`).FindStringSubmatch(m)
		pids := regexp.MustCompile(`(?m)^pids\.current\s+(\d+)`).FindStringSubmatch(m)
		if mem == nil || pids == nil {
			t.Fatalf("ctr task metrics: no memory usage or pids.current:\n%s", m)
		}
		if n, _ := strconv.ParseUint(mem[1], 10, 64); n == 0 {
			t.Fatalf("memory usage 0:\n%s", m)
		}
		if pids[1] == "3" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pids.current %s, want 3:\n%s", pids[1], m)
		}
	}
	t.Logf("ctr task metrics:\n%s", m)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.CtrCmd(ctx, "task", "exec", "-t", "--exec-id", "t1", id, "sh", "-c",
		"tty; "+waitSize("20 50")+`echo "size1:$(stty size)"; read x; `+waitSize("40 120")+`echo "size2:$(stty size) got:$x"; exit 4`)
	out := startOnPty(t, cmd, 20, 50)
	out.waitFor(t, regexp.MustCompile(`size1:[^\n]*\n`), 2*time.Minute)
	if err := out.master.Resize(console.WinSize{Height: 40, Width: 120}); err != nil {
		t.Fatal(err)
	}
	if _, err := out.master.Write([]byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	code := exitCode(t, cmd.Wait())
	got := out.all(t)
	if code != 4 || !ptsLine.MatchString(got) || !strings.Contains(got, "size1:20 50\n") || !strings.Contains(got, "size2:40 120 got:hello\n") {
		t.Fatalf("ctr task exec -t: exit %d (want 4), output %q", code, got)
	}
}

// TestShimOOM: a container over its memory limit is OOM-killed in the
// guest, and containerd gets TaskOOM before the TaskExit it causes.
func TestShimOOM(t *testing.T) {
	e := startShimEnv(t)
	stopEvents := e.ctrEvents(t)
	_, stderr, code, err := e.run("oom", []string{"--memory-limit", "33554432"}, "sh", "-c", "head -c 100m /dev/zero | tail")
	if err != nil {
		t.Fatal(err)
	}
	if code != 137 {
		t.Fatalf("exit %d, want 137 (OOM kill); stderr %q", code, stderr)
	}
	var topics []string
	for _, l := range stopEvents() {
		topic, body, _ := strings.Cut(l, " ")
		if jsonField(body, "container_id") == "oom" && (topic == "/tasks/oom" || topic == "/tasks/exit") {
			topics = append(topics, topic)
		}
	}
	if len(topics) < 2 || topics[0] != "/tasks/oom" || topics[len(topics)-1] != "/tasks/exit" {
		t.Fatalf("events %v, want /tasks/oom before /tasks/exit", topics)
	}
}

// TestRuntimeRunTerminal: `msb-runtime run` of a bundle with
// process.terminal, from a terminal, gives the container a pty of that
// terminal's size.
func TestRuntimeRunTerminal(t *testing.T) {
	requireVM(t)
	dir := bundle(t, []string{"sh", "-c", `tty; echo "size:$(stty size)"; exit 5`}, func(s *specs.Spec) { s.Process.Terminal = true })
	for _, app := range []string{"tty", "stty"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "rootfs/bin", app)); err != nil {
			t.Fatal(err)
		}
	}
	if r := run(t, dir, ""); r.code == 0 || !strings.Contains(r.stderr, "stdin is not a terminal") {
		t.Errorf("process.terminal without a terminal: exit %d, stderr %q; want a clear refusal", r.code, r.stderr)
	}
	root := stateRoot(t)
	cmd := runtimeCmd(root, "run", "--bundle", dir, "t-run-tty")
	out := startOnPty(t, cmd, 24, 77)
	code := exitCode(t, cmd.Wait())
	got := out.all(t)
	if code != 5 || !ptsLine.MatchString(got) || !strings.Contains(got, "size:24 77\n") {
		t.Fatalf("msb-runtime run with a terminal: exit %d (want 5), output %q", code, got)
	}
	assertNothingLeft(t, root)
}
