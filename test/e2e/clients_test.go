package e2e

// The call sequences of real containerd clients (dockerd, nerdctl),
// reproduced with containerd's Go client against the test containerd.

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// goClient is a containerd Go client on the test containerd, in its
// namespace.
func (e *shimEnv) goClient(t *testing.T) (*client.Client, context.Context) {
	t.Helper()
	c, err := client.New(e.Address, client.WithDefaultNamespace(e.Namespace))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, context.Background()
}

// newContainer creates container id of the busybox image on msb's
// runtime, as nerdctl and dockerd do; it is removed (task and all) when
// the test ends.
func (e *shimEnv) newContainer(t *testing.T, c *client.Client, id string, opts ...oci.SpecOpts) client.Container {
	t.Helper()
	ctx := context.Background()
	img, err := c.GetImage(ctx, e.image)
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]oci.SpecOpts{oci.WithImageConfig(img)}, opts...)
	ctr, err := c.NewContainer(ctx, id,
		client.WithImage(img),
		client.WithNewSnapshot(id+"-snap", img),
		client.WithRuntime(msbRuntimeType, nil),
		client.WithNewSpec(opts...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.remove(t, id) })
	return ctr
}

// runningTask creates and starts container id running sleep 600 (opts
// applied to its spec), its exit waited for (as clients do), and returns
// the task and the container's spec, for tests that exec into it.
func (e *shimEnv) runningTask(t *testing.T, c *client.Client, id string, opts ...oci.SpecOpts) (client.Task, *specs.Spec) {
	t.Helper()
	ctx := context.Background()
	ctr := e.newContainer(t, c, id, append([]oci.SpecOpts{oci.WithProcessArgs("sleep", "600")}, opts...)...)
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return task, spec
}

// waitAndStart subscribes to p's exit, then starts it, as clients must
// (an exit before Wait would be missed).
func waitAndStart(t *testing.T, ctx context.Context, p client.Process) <-chan client.ExitStatus {
	t.Helper()
	ch, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", p.ID(), err)
	}
	return ch
}

// waitStatus waits at most d for an exit status from ch.
func waitExit(t *testing.T, ch <-chan client.ExitStatus, d time.Duration, what string) client.ExitStatus {
	t.Helper()
	select {
	case st := <-ch:
		return st
	case <-time.After(d):
		t.Fatalf("%s: Wait did not return within %s", what, d)
	}
	return client.ExitStatus{}
}

// dockerd kills a task it created but could not start (any failure
// between create and start) and waits for its exit: Wait must return 137
// and TaskExit be published, as with runc's shim.
func TestClientKillCreatedTask(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	ctr := e.newContainer(t, c, "killcreated", oci.WithProcessArgs("sleep", "600"))
	evs, errs := c.Subscribe(ctx, `topic=="/tasks/exit"`)
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil {
		t.Fatal(err)
	}
	st := waitExit(t, exitC, 15*time.Second, "killed created task")
	if st.ExitCode() != 137 {
		t.Fatalf("exit status %d (%v), want 137", st.ExitCode(), st.Error())
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case env := <-evs:
			v, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				t.Fatal(err)
			}
			if ex, ok := v.(*eventstypes.TaskExit); ok && ex.ContainerID == "killcreated" {
				if ex.ExitStatus != 137 {
					t.Fatalf("TaskExit status %d, want 137", ex.ExitStatus)
				}
				if _, err := task.Delete(ctx); err != nil {
					t.Fatal(err)
				}
				return
			}
		case err := <-errs:
			t.Fatal(err)
		case <-deadline:
			t.Fatal("no TaskExit for the killed created task")
		}
	}
}

// stdinCloser is nerdctl's StdinCloser: at EOF it calls Closer, which
// nerdctl sets only after Exec returned (it needs the process).
type stdinCloser struct {
	mu     sync.Mutex
	r      io.Reader
	closer func()
	sawEOF bool // EOF read before closer was set: nerdctl hangs then
}

func (s *stdinCloser) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.mu.Lock()
		if s.closer != nil {
			s.closer()
		} else {
			s.sawEOF = true
		}
		s.mu.Unlock()
	}
	return n, err
}

func (s *stdinCloser) setCloser(f func()) {
	s.mu.Lock()
	s.closer = f
	s.mu.Unlock()
}

// lockedBuffer is a bytes.Buffer safe for cio's copy goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// nerdctl's exec -i, exec -it and top, and stats, on one running container.
func TestClientExecStdioPidsStats(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	task, spec := e.runningTask(t, c, "clientexec")

	t.Run("exec -i sees EOF", func(t *testing.T) {
		// echo 'echo in-$((6*7))' | nerdctl exec -i clientexec sh
		in := &stdinCloser{r: strings.NewReader("echo in-$((6*7))\n")}
		var out, errb lockedBuffer
		ps := *spec.Process
		ps.Args, ps.Terminal = []string{"sh"}, false
		p, err := task.Exec(ctx, "exec-i", &ps, cio.NewCreator(cio.WithStreams(in, &out, &errb)))
		if err != nil {
			t.Fatal(err)
		}
		in.setCloser(func() { _ = p.CloseIO(ctx, client.WithStdinCloser) })
		exitC, err := p.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		st := waitExit(t, exitC, 20*time.Second, "exec -i after stdin EOF")
		p.IO().Wait()
		if st.ExitCode() != 0 || out.String() != "in-42\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 0, \"in-42\\n\"", st.ExitCode(), out.String(), errb.String())
		}
		if in.sawEOF {
			t.Fatal("stdin EOF was read before Exec returned: the shim opened the stdin fifo before Start")
		}
		if _, err := p.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("exec -it with a stderr writer", func(t *testing.T) {
		// nerdctl exec -it: terminal, and a stderr stream given anyway.
		var out, errb lockedBuffer
		ps := *spec.Process
		ps.Args, ps.Terminal = []string{"echo", "tty-ok"}, true
		p, err := task.Exec(ctx, "exec-t", &ps, cio.NewCreator(cio.WithStreams(strings.NewReader(""), &out, &errb), cio.WithTerminal))
		if err != nil {
			t.Fatal(err)
		}
		exitC, err := p.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatalf("start of a terminal exec with a stderr path: %v", err)
		}
		st := waitExit(t, exitC, 20*time.Second, "exec -t")
		p.IO().Wait()
		if st.ExitCode() != 0 || !strings.Contains(out.String(), "tty-ok") {
			t.Fatalf("exit %d, output %q", st.ExitCode(), out.String())
		}
		if _, err := p.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("top", func(t *testing.T) {
		ps, err := task.Pids(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) == 0 {
			t.Fatal("no processes")
		}
		for _, p := range ps {
			if p.Pid != task.Pid() {
				t.Errorf("pid %d: not the task's host pid %d (docker top would show an unrelated host process)", p.Pid, task.Pid())
			}
			v, err := typeurl.UnmarshalAny(p.Info)
			if err != nil {
				t.Fatalf("info: %v", err)
			}
			if g, ok := v.(*tasktypes.ProcessInfo); !ok || g.Pid == 0 {
				t.Errorf("info %v: want the guest's ProcessInfo", v)
			}
		}
	})

	t.Run("stats", func(t *testing.T) {
		v := metrics(t, ctx, task)
		switch s := v.(type) {
		case *v1.Metrics:
			// What nerdctl stats and dockerd read without checking.
			if s.Blkio == nil || s.CPU == nil || s.CPU.Usage == nil || s.Memory == nil || s.Memory.Usage == nil || s.Pids == nil {
				t.Fatalf("v1 metrics with a nil field: %v", s)
			}
			if s.Memory.Usage.Usage == 0 || s.Pids.Current == 0 || s.CPU.Usage.Total == 0 {
				t.Fatalf("idle container: memory %d, pids %d, cpu %d: want real values", s.Memory.Usage.Usage, s.Pids.Current, s.CPU.Usage.Total)
			}
		case *v2.Metrics:
			if s.Memory == nil || s.Pids == nil || s.Pids.Current == 0 {
				t.Fatalf("v2 metrics: %v", s)
			}
		default:
			t.Fatalf("metrics of type %T", v)
		}
	})

	// What dockerd's pause, unpause and update call (the Docker tests
	// cover them only where dockerd is built): the guest's OCI runtime
	// freezes the cgroup and reads the resources from stdin.
	t.Run("pause resume update", func(t *testing.T) {
		for _, c := range []struct {
			op   func(context.Context) error
			want client.ProcessStatus
		}{{task.Pause, client.Paused}, {task.Resume, client.Running}} {
			if err := c.op(ctx); err != nil {
				t.Fatal(err)
			}
			if st, err := task.Status(ctx); err != nil || st.Status != c.want {
				t.Fatalf("status %v, %v; want %s", st.Status, err, c.want)
			}
		}
		limit := int64(100 << 20) // within the 128 MiB the default VM gives a container
		if err := task.Update(ctx, client.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})); err != nil {
			t.Fatal(err)
		}
		v := metrics(t, ctx, task)
		var got uint64
		switch s := v.(type) {
		case *v1.Metrics:
			if s.Memory != nil && s.Memory.Usage != nil {
				got = s.Memory.Usage.Limit
			}
		case *v2.Metrics:
			if s.Memory != nil {
				got = s.Memory.UsageLimit
			}
		}
		if got != uint64(limit) {
			t.Errorf("memory limit after update: %d (%T), want %d", got, v, limit)
		}
	})

	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// metrics returns the task's metrics, decoded (cgroup v1 or v2 stats).
func metrics(t *testing.T, ctx context.Context, task client.Task) any {
	t.Helper()
	m, err := task.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A terminal init with a stderr stream (nerdctl run -it): containerd makes
// no stderr fifo; the shim must not need one.
func TestClientTerminalInitStderr(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	ctr := e.newContainer(t, c, "ttyinit", oci.WithProcessArgs("echo", "init-tty"), oci.WithTTY)
	var out, errb lockedBuffer
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(strings.NewReader(""), &out, &errb), cio.WithTerminal))
	if err != nil {
		t.Fatalf("create with a terminal and a stderr path: %v", err)
	}
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st := waitExit(t, exitC, 20*time.Second, "terminal init")
	task.IO().Wait()
	if st.ExitCode() != 0 || !strings.Contains(out.String(), "init-tty") {
		t.Fatalf("exit %d, output %q", st.ExitCode(), out.String())
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// containerd's TestDaemonRestartWithRunningShim (and clients like it)
// probe the task's pid with kill(pid, 0) once Wait returned: as under
// runc, the pid must be gone when the exit is reported.
func TestClientPidGoneAtExit(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	ctr := e.newContainer(t, c, "pidgone", oci.WithProcessArgs("sleep", "600"))
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	exitC := waitAndStart(t, ctx, task)
	pid := int(task.Pid())
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("task pid %d while running: %v", pid, err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st := waitExit(t, exitC, time.Minute, "killed task"); st.ExitCode() != 137 {
		t.Fatalf("exit status %d (%v), want 137", st.ExitCode(), st.Error())
	}
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Fatalf("task pid %d still exists after its exit was reported (kill: %v)", pid, err)
	}
	if st, err := task.Delete(ctx); err != nil || st.ExitCode() != 137 {
		t.Fatalf("delete: %v, status %d, want 137", err, st.ExitCode())
	}
}

// A guest's clock is its own: root in the guest sets it (here to 1970),
// and TCG lets it drift. The exit time clients get is the host's, after
// their Start (containerd's TestContainerExitedAtSet).
func TestClientExitTimeIsTheHosts(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	ctr := e.newContainer(t, c, "clock", oci.WithPrivileged, oci.WithProcessArgs("sh", "-c", `date -s @1000000 >/dev/null; [ "$(date +%Y)" = 1970 ] && exit 3`))
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	exitC := waitAndStart(t, ctx, task)
	st := waitExit(t, exitC, time.Minute, "clock setter")
	if st.ExitCode() != 3 {
		t.Fatalf("exit status %d (%v), want 3: the guest's clock was not set", st.ExitCode(), st.Error())
	}
	if !st.ExitTime().After(start) || st.ExitTime().After(time.Now()) {
		t.Errorf("Wait's exit time %v is not between Start (%v) and now", st.ExitTime(), start)
	}
	s, err := task.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !s.ExitTime.After(start) {
		t.Errorf("Status's exit time %v is before Start (%v)", s.ExitTime, start)
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}
