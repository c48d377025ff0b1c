package agent_test

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/hashicorp/yamux"
	"google.golang.org/grpc/codes"
)

// readUntil reads s until what was read matches re (or 30 s pass).
func readUntil(t *testing.T, s *yamux.Stream, re *regexp.Regexp) string {
	t.Helper()
	var got bytes.Buffer
	buf := make([]byte, 4096)
	deadline := time.Now().Add(30 * time.Second)
	for !re.Match(got.Bytes()) {
		_ = s.SetReadDeadline(deadline)
		n, err := s.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("reading for %v: %v (got %q)", re, err, got.String())
		}
	}
	_ = s.SetReadDeadline(time.Time{})
	return got.String()
}

// A terminal process gets a pty: its output and input go through the
// stdin and stdout streams, ResizePty sets its size (before Start too), and
// all output is in before the exit.
func TestTerminal(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t)
	spec := testSpec(e.rootfs, "sh", "-c", `tty; echo "size1:$(stty size)"; read x; echo "size2:$(stty size) got:$x"; exit 7`)
	spec.Process.Terminal = true
	id := e.id()
	in, inURI := e.stdio()
	out, outURI := e.stdio()
	if _, err := e.tasks.Create(ctx, &task.CreateTaskRequest{ID: id, Terminal: true, Stdin: inURI, Stdout: outURI, Options: specAny(t, spec)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.tasks.Delete(ctxT(t), &task.DeleteRequest{ID: id}) })
	if _, err := e.tasks.ResizePty(ctx, &task.ResizePtyRequest{ID: id, Width: 100, Height: 30}); err != nil {
		t.Fatalf("resize before start: %v", err)
	}
	if _, err := e.tasks.Start(ctx, &task.StartRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	first := readUntil(t, out, regexp.MustCompile(`size1:[^\n]*\n`))
	if _, err := e.tasks.ResizePty(ctx, &task.ResizePtyRequest{ID: id, Width: 120, Height: 40}); err != nil {
		t.Fatalf("resize: %v", err)
	}
	if _, err := in.Write([]byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	if w := e.wait(id, ""); w.ExitStatus != 7 {
		t.Errorf("exit status %d, want 7", w.ExitStatus)
	}
	all := strings.ReplaceAll(first+string(readNow(t, out)), "\r\n", "\n")
	for _, want := range []string{"size1:30 100\n", "size2:40 120 got:hello\n"} {
		if !strings.Contains(all, want) {
			t.Errorf("terminal output %q lacks %q", all, want)
		}
	}
	if !regexp.MustCompile(`(?m)^/dev/pts/\d+$`).MatchString(all) {
		t.Errorf("tty did not name a pty: %q", all)
	}
	// A late resize (SIGWINCH after the exit) is no error.
	if _, err := e.tasks.ResizePty(ctx, &task.ResizePtyRequest{ID: id, Width: 1, Height: 1}); err != nil {
		t.Errorf("resize after exit: %v", err)
	}
}

// An exec with a terminal, resized before it starts; a process without
// one cannot be resized.
func TestExecTerminal(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t)
	spec := testSpec(e.rootfs, "sleep", "1000")
	id, _, _, _ := e.run(spec, false)
	if _, err := e.tasks.ResizePty(ctx, &task.ResizePtyRequest{ID: id, Width: 10, Height: 10}); codeOf(err) != codes.FailedPrecondition {
		t.Errorf("resize of a process without a terminal: %v, want FailedPrecondition", err)
	}
	proc := *spec.Process
	proc.Args = []string{"sh", "-c", `tty; echo "size:$(stty size)"; echo to-stderr >&2`}
	if _, err := e.tasks.Exec(ctx, &task.ExecProcessRequest{ID: id, ExecID: "mismatch", Terminal: true, Spec: processAny(t, &proc)}); codeOf(err) != codes.InvalidArgument {
		t.Errorf("exec with terminal flag but no process.terminal: %v, want InvalidArgument", err)
	}
	proc.Terminal = true
	out, outURI := e.stdio()
	errs, errURI := e.stdio()
	if _, err := e.tasks.Exec(ctx, &task.ExecProcessRequest{ID: id, ExecID: "t1", Terminal: true, Stdout: outURI, Stderr: errURI, Spec: processAny(t, &proc)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tasks.ResizePty(ctx, &task.ResizePtyRequest{ID: id, ExecID: "t1", Width: 50, Height: 20}); err != nil {
		t.Fatalf("resize before start: %v", err)
	}
	if _, err := e.tasks.Start(ctx, &task.StartRequest{ID: id, ExecID: "t1"}); err != nil {
		t.Fatal(err)
	}
	if w := e.wait(id, "t1"); w.ExitStatus != 0 {
		t.Errorf("exec exit %d", w.ExitStatus)
	}
	got := strings.ReplaceAll(string(readNow(t, out)), "\r\n", "\n")
	if !regexp.MustCompile(`^/dev/pts/\d+\nsize:20 50\nto-stderr\n$`).MatchString(got) {
		t.Errorf("exec terminal output %q", got)
	}
	if b := readNow(t, errs); len(b) != 0 {
		t.Errorf("stderr stream of a terminal process carried %q", b)
	}
}
