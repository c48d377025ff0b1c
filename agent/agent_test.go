package agent_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/hashicorp/yamux"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/msb-dev/msb/protocol"
)

// run creates and starts a container with stdout and stderr streams and
// returns its id and the streams.
func (e *env) run(spec *specs.Spec, stdin bool) (id string, in, out, errs *yamux.Stream) {
	e.t.Helper()
	ctx := ctxT(e.t)
	id = e.id()
	req := &task.CreateTaskRequest{ID: id, Options: specAny(e.t, spec)}
	if stdin {
		in, req.Stdin = e.stdio()
	}
	out, req.Stdout = e.stdio()
	errs, req.Stderr = e.stdio()
	resp, err := e.tasks.Create(ctx, req)
	if err != nil {
		e.t.Fatalf("create: %v", err)
	}
	if resp.Pid == 0 {
		e.t.Fatal("create returned pid 0")
	}
	e.t.Cleanup(func() {
		ctx := ctxT(e.t)
		_, _ = e.tasks.Kill(ctx, &task.KillRequest{ID: id, Signal: uint32(unix.SIGKILL), All: true})
		_, _ = e.tasks.Delete(ctx, &task.DeleteRequest{ID: id})
	})
	if _, err := e.tasks.Start(ctx, &task.StartRequest{ID: id}); err != nil {
		e.t.Fatalf("start: %v", err)
	}
	return id, in, out, errs
}

func (e *env) wait(id, execID string) *task.WaitResponse {
	e.t.Helper()
	w, err := e.tasks.Wait(ctxT(e.t), &task.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		e.t.Fatalf("wait %s %s: %v", id, execID, err)
	}
	return w
}

// readNow reads what the stream already holds; it must end in EOF without
// waiting: the agent delivers output and closes the stream before it
// reports the exit.
func readNow(t *testing.T, s *yamux.Stream) []byte {
	t.Helper()
	_ = s.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	b, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("output stream not complete and closed when the exit was reported: %v (got %q)", err, b)
	}
	return b
}

func codeOf(err error) codes.Code {
	s, _ := status.FromError(err)
	return s.Code()
}

func TestEchoOutputBeforeExit(t *testing.T) {
	e := startAgent(t)
	id, _, out, errs := e.run(testSpec(e.rootfs, "sh", "-c", "echo hello; echo oops >&2; echo world"), false)
	w := e.wait(id, "")
	if w.ExitStatus != 0 || w.ExitedAt == nil {
		t.Fatalf("wait = %d at %v, want 0 with a time", w.ExitStatus, w.ExitedAt)
	}
	// Nothing was read before Wait returned: the whole output and the
	// FIN must be in already.
	if got := string(readNow(t, out)); got != "hello\nworld\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := string(readNow(t, errs)); got != "oops\n" {
		t.Errorf("stderr = %q", got)
	}
	st, err := e.tasks.State(ctxT(t), &task.StateRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != tasktypes.Status_STOPPED || st.ExitStatus != 0 || !strings.HasSuffix(st.Bundle, "/"+id) {
		t.Errorf("state = %v", st)
	}
	d, err := e.tasks.Delete(ctxT(t), &task.DeleteRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	if d.ExitStatus != 0 || d.Pid == 0 {
		t.Errorf("delete = %v", d)
	}
	if _, err := e.tasks.State(ctxT(t), &task.StateRequest{ID: id}); codeOf(err) != codes.NotFound {
		t.Errorf("state after delete: %v, want NotFound", err)
	}
}

func TestExitCode(t *testing.T) {
	e := startAgent(t)
	id, _, out, _ := e.run(testSpec(e.rootfs, "sh", "-c", "exit 42"), false)
	if w := e.wait(id, ""); w.ExitStatus != 42 {
		t.Fatalf("exit status %d, want 42", w.ExitStatus)
	}
	readNow(t, out)
	d, err := e.tasks.Delete(ctxT(t), &task.DeleteRequest{ID: id})
	if err != nil || d.ExitStatus != 42 {
		t.Fatalf("delete = %v, %v; want status 42", d, err)
	}
}

func TestStdinThroughCat(t *testing.T) {
	e := startAgent(t)
	id, in, out, _ := e.run(testSpec(e.rootfs, "cat"), true)
	got := readAll(out)
	msg := bytes.Repeat([]byte("stdin goes through cat\n"), 10000)
	if _, err := in.Write(msg); err != nil {
		t.Fatal(err)
	}
	in.Close() // half-close: cat reads EOF
	if _, err := e.tasks.CloseIO(ctxT(t), &task.CloseIORequest{ID: id, Stdin: true}); err != nil {
		t.Fatal(err)
	}
	if w := e.wait(id, ""); w.ExitStatus != 0 {
		t.Fatalf("cat exit %d", w.ExitStatus)
	}
	if b := recv(t, got); !bytes.Equal(b, msg) {
		t.Fatalf("cat echoed %d bytes, want %d", len(b), len(msg))
	}
}

func TestLargeOutputIntact(t *testing.T) {
	e := startAgent(t)
	const n = 16 << 20
	script := fmt.Sprintf("(yes E | head -c 1048576 >&2) & yes 0123456789abcdef | head -c %d; wait", n)
	id, _, out, errs := e.run(testSpec(e.rootfs, "sh", "-c", script), false)
	gotOut, gotErr := readAll(out), readAll(errs)
	if w := e.wait(id, ""); w.ExitStatus != 0 {
		t.Fatalf("exit %d", w.ExitStatus)
	}
	o, er := recv(t, gotOut), recv(t, gotErr)
	want := bytes.Repeat([]byte("0123456789abcdef\n"), n/17+1)[:n]
	if len(o) != n || sha256.Sum256(o) != sha256.Sum256(want) {
		t.Errorf("stdout: %d bytes, sha256 %x; want %d bytes, sha256 %x", len(o), sha256.Sum256(o), n, sha256.Sum256(want))
	}
	if wantErr := bytes.Repeat([]byte("E\n"), 1<<19); !bytes.Equal(er, wantErr) {
		t.Errorf("stderr: %d bytes, want %d bytes of E lines", len(er), len(wantErr))
	}
}

func TestExecAndPids(t *testing.T) {
	e := startAgent(t)
	spec := testSpec(e.rootfs, "sleep", "1000")
	id, _, _, _ := e.run(spec, false)
	ctx := ctxT(t)

	proc := *spec.Process
	proc.Args = []string{"sh", "-c", "echo in-exec $(cat); echo exec-err >&2; exit 3"}
	in, inURI := e.stdio()
	out, outURI := e.stdio()
	errs, errURI := e.stdio()
	if _, err := e.tasks.Exec(ctx, &task.ExecProcessRequest{ID: id, ExecID: "e1", Stdin: inURI, Stdout: outURI, Stderr: errURI, Spec: processAny(t, &proc)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tasks.Exec(ctx, &task.ExecProcessRequest{ID: id, ExecID: "e1", Spec: processAny(t, &proc)}); codeOf(err) != codes.AlreadyExists {
		t.Errorf("second exec e1: %v, want AlreadyExists", err)
	}
	st, err := e.tasks.Start(ctx, &task.StartRequest{ID: id, ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Write([]byte("from-stdin")); err != nil {
		t.Fatal(err)
	}
	in.Close()
	if w := e.wait(id, "e1"); w.ExitStatus != 3 {
		t.Errorf("exec exit %d, want 3", w.ExitStatus)
	}
	if got := string(readNow(t, out)); got != "in-exec from-stdin\n" {
		t.Errorf("exec stdout %q", got)
	}
	if got := string(readNow(t, errs)); got != "exec-err\n" {
		t.Errorf("exec stderr %q", got)
	}
	if s, err := e.tasks.State(ctx, &task.StateRequest{ID: id, ExecID: "e1"}); err != nil || s.Status != tasktypes.Status_STOPPED || s.Pid != st.Pid || s.ExitStatus != 3 {
		t.Errorf("exec state %v, %v", s, err)
	}
	if d, err := e.tasks.Delete(ctx, &task.DeleteRequest{ID: id, ExecID: "e1"}); err != nil || d.ExitStatus != 3 {
		t.Errorf("exec delete %v, %v", d, err)
	}

	// A long-running exec shows in Pids with its exec id, and dies by Kill.
	proc.Args = []string{"sleep", "1000"}
	if _, err := e.tasks.Exec(ctx, &task.ExecProcessRequest{ID: id, ExecID: "e2", Spec: processAny(t, &proc)}); err != nil {
		t.Fatal(err)
	}
	st2, err := e.tasks.Start(ctx, &task.StartRequest{ID: id, ExecID: "e2"})
	if err != nil {
		t.Fatal(err)
	}
	pids, err := e.tasks.Pids(ctx, &task.PidsRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	var found []uint32
	withInfo := false
	for _, p := range pids.Processes {
		found = append(found, p.Pid)
		if p.Pid == st2.Pid && p.Info != nil && bytes.Contains(p.Info.Value, []byte("e2")) {
			withInfo = true
		}
	}
	cs, _ := e.tasks.State(ctx, &task.StateRequest{ID: id})
	if !slices.Contains(found, st2.Pid) || !slices.Contains(found, cs.Pid) || !withInfo {
		t.Errorf("pids %v (exec info %v), want init %d and exec %d with its exec id", found, withInfo, cs.Pid, st2.Pid)
	}
	if _, err := e.tasks.Delete(ctx, &task.DeleteRequest{ID: id, ExecID: "e2"}); codeOf(err) != codes.FailedPrecondition {
		t.Errorf("delete running exec: %v, want FailedPrecondition", err)
	}
	if _, err := e.tasks.Kill(ctx, &task.KillRequest{ID: id, ExecID: "e2", Signal: uint32(unix.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	if w := e.wait(id, "e2"); w.ExitStatus != 128+9 {
		t.Errorf("killed exec status %d, want 137", w.ExitStatus)
	}
	if _, err := e.tasks.Kill(ctx, &task.KillRequest{ID: id, ExecID: "e2", Signal: uint32(unix.SIGKILL)}); codeOf(err) != codes.NotFound {
		t.Errorf("kill finished exec: %v, want NotFound", err)
	}
}

func TestKillSIGTERM(t *testing.T) {
	e := startAgent(t)
	// As PID 1 of its namespace sh only dies of signals it handles.
	id, _, out, _ := e.run(testSpec(e.rootfs, "sh", "-c", `trap "echo got-term; exit 7" TERM; echo ready; while :; do sleep 0.05; done`), false)
	buf := make([]byte, 6)
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("read ready: %q %v", buf, err)
	}
	if _, err := e.tasks.Kill(ctxT(t), &task.KillRequest{ID: id, Signal: uint32(unix.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	if w := e.wait(id, ""); w.ExitStatus != 7 {
		t.Fatalf("exit %d, want 7", w.ExitStatus)
	}
	if got := string(readNow(t, out)); got != "got-term\n" {
		t.Errorf("stdout after ready = %q", got)
	}
	if _, err := e.tasks.Kill(ctxT(t), &task.KillRequest{ID: id, Signal: uint32(unix.SIGTERM)}); codeOf(err) != codes.NotFound {
		t.Errorf("kill stopped task: %v, want NotFound", err)
	}
}

func TestRequestErrors(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t)
	spec := testSpec(e.rootfs, "true")
	cases := []struct {
		name string
		req  *task.CreateTaskRequest
		want codes.Code
	}{
		{"terminal flag without process.terminal", &task.CreateTaskRequest{ID: "tty", Terminal: true, Options: specAny(t, spec)}, codes.InvalidArgument},
		{"no options", &task.CreateTaskRequest{ID: "noopt"}, codes.InvalidArgument},
		{"wrong type", &task.CreateTaskRequest{ID: "wrongtype", Options: &anypb.Any{TypeUrl: "x", Value: []byte("{}")}}, codes.InvalidArgument},
		{"bad id", &task.CreateTaskRequest{ID: "a/b", Options: specAny(t, spec)}, codes.InvalidArgument},
		{"fifo stdio", &task.CreateTaskRequest{ID: "fifo", Stdout: "/run/x.fifo", Options: specAny(t, spec)}, codes.InvalidArgument},
		{"stream never opened", &task.CreateTaskRequest{ID: "nostream", Stdout: protocol.StreamURI("never"), Options: specAny(t, spec)}, codes.DeadlineExceeded},
	}
	for _, c := range cases {
		if _, err := e.tasks.Create(ctx, c.req); codeOf(err) != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	bad := testSpec(filepath.Join(e.rootfs, "does-not-exist"), "true")
	_, err := e.tasks.Create(ctx, &task.CreateTaskRequest{ID: "badroot", Options: specAny(t, bad)})
	if err == nil || !strings.Contains(err.Error(), "OCI runtime create failed") {
		t.Errorf("create with a missing rootfs: %v", err)
	}
	for name, call := range map[string]func() error{
		"state":  func() error { _, err := e.tasks.State(ctx, &task.StateRequest{ID: "nope"}); return err },
		"wait":   func() error { _, err := e.tasks.Wait(ctx, &task.WaitRequest{ID: "nope"}); return err },
		"kill":   func() error { _, err := e.tasks.Kill(ctx, &task.KillRequest{ID: "nope", Signal: 9}); return err },
		"delete": func() error { _, err := e.tasks.Delete(ctx, &task.DeleteRequest{ID: "nope"}); return err },
	} {
		if err := call(); codeOf(err) != codes.NotFound {
			t.Errorf("%s of unknown container: %v, want NotFound", name, err)
		}
	}
	if _, err := e.tasks.Stats(ctx, &task.StatsRequest{ID: "nope"}); codeOf(err) != codes.NotFound {
		t.Errorf("stats of unknown container: %v, want NotFound", err)
	}
	c, err := e.tasks.Connect(ctx, &task.ConnectRequest{})
	if err != nil || int(c.ShimPid) != e.pid {
		t.Errorf("connect = %v, %v; want the agent's pid %d", c, err, e.pid)
	}
}

// A stdio stream may arrive after the request that names it.
func TestLateStdioStream(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t)
	id := e.id()
	tok := "late-" + id
	done := make(chan error, 1)
	go func() {
		_, err := e.tasks.Create(ctx, &task.CreateTaskRequest{ID: id, Stdout: protocol.StreamURI(tok), Options: specAny(t, testSpec(e.rootfs, "echo", "late"))})
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	out := e.stream(protocol.KindStdio, tok)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.tasks.Delete(ctxT(t), &task.DeleteRequest{ID: id}) })
	if _, err := e.tasks.Start(ctx, &task.StartRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	e.wait(id, "")
	if got := string(readNow(t, out)); got != "late\n" {
		t.Errorf("stdout %q", got)
	}
}

// Deleting a created, never started container kills its init.
func TestDeleteCreated(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t)
	id := e.id()
	if _, err := e.tasks.Create(ctx, &task.CreateTaskRequest{ID: id, Options: specAny(t, testSpec(e.rootfs, "true"))}); err != nil {
		t.Fatal(err)
	}
	s, err := e.tasks.State(ctx, &task.StateRequest{ID: id})
	if err != nil || s.Status != tasktypes.Status_CREATED {
		t.Fatalf("state %v, %v", s, err)
	}
	if _, err := e.tasks.Delete(ctx, &task.DeleteRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tasks.State(ctx, &task.StateRequest{ID: id}); codeOf(err) != codes.NotFound {
		t.Errorf("state after delete: %v", err)
	}
}

// An exec whose background child keeps stdout open: the exit is reported
// once the pipe has been silent for the drain timeout (2s in these tests),
// with everything written before delivered.
func TestExecLeftoverHoldsPipe(t *testing.T) {
	e := startAgent(t)
	spec := testSpec(e.rootfs, "sleep", "1000")
	id, _, _, _ := e.run(spec, false)
	ctx := ctxT(t)
	proc := *spec.Process
	proc.Args = []string{"sh", "-c", "sleep 100 & echo bg"}
	out, outURI := e.stdio()
	if _, err := e.tasks.Exec(ctx, &task.ExecProcessRequest{ID: id, ExecID: "bg", Stdout: outURI, Spec: processAny(t, &proc)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tasks.Start(ctx, &task.StartRequest{ID: id, ExecID: "bg"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if w := e.wait(id, "bg"); w.ExitStatus != 0 {
		t.Errorf("exit %d", w.ExitStatus)
	}
	if d := time.Since(start); d < time.Second || d > 10*time.Second {
		t.Errorf("exit reported after %v, want about the 2s drain timeout", d)
	}
	if got := string(readNow(t, out)); got != "bg\n" {
		t.Errorf("stdout %q", got)
	}
}

// One stream may carry stdin and stdout both.
func TestSharedStdioStream(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t)
	id := e.id()
	s, uri := e.stdio()
	if _, err := e.tasks.Create(ctx, &task.CreateTaskRequest{ID: id, Stdin: uri, Stdout: uri, Options: specAny(t, testSpec(e.rootfs, "cat"))}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.tasks.Delete(ctxT(t), &task.DeleteRequest{ID: id}) })
	if _, err := e.tasks.Start(ctx, &task.StartRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	got := readAll(s)
	if _, err := s.Write([]byte("round trip\n")); err != nil {
		t.Fatal(err)
	}
	s.Close() // half-close: stdin EOF, stdout still flows back
	if w := e.wait(id, ""); w.ExitStatus != 0 {
		t.Fatalf("exit %d", w.ExitStatus)
	}
	if b := string(recv(t, got)); b != "round trip\n" {
		t.Errorf("got %q", b)
	}
}
