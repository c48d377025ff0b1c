package vmm

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// startProc starts a stand-in VMM that ends on SIGTERM, or with
// ignoreTerm only on SIGKILL, and reaps it in the background.
func startProc(t *testing.T, ignoreTerm bool) (*exec.Cmd, uint64, <-chan struct{}) {
	t.Helper()
	script := "trap 'exit 0' TERM; while :; do sleep 0.05; done"
	if ignoreTerm {
		script = "trap '' TERM; while :; do sleep 0.05; done"
	}
	cmd := exec.Command("/bin/sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	time.Sleep(100 * time.Millisecond) // the trap is set
	start, ok := ProcStart(cmd.Process.Pid)
	if !ok {
		t.Fatal("no start time")
	}
	return cmd, start, done
}

// TestOpenProcOtherStart: a record whose start time is not the process's
// names another process: never opened, never signalled.
func TestOpenProcOtherStart(t *testing.T) {
	cmd, start, _ := startProc(t, false)
	if p, err := OpenProc(cmd.Process.Pid, start+1); p != nil || err != nil {
		t.Fatalf("opened a process by its pid alone: %v, %v", p, err)
	}
	if Alive(cmd.Process.Pid, start+1) || Alive(cmd.Process.Pid, 0) {
		t.Fatal("alive without the recorded start time")
	}
	if !Alive(cmd.Process.Pid, start) {
		t.Fatal("a running process is not alive")
	}
}

// TestProcStop: SIGTERM ends a VMM that takes it; one that ignores it is
// killed after StopStep; an exited one is not alive.
func TestProcStop(t *testing.T) {
	for _, ignore := range []bool{false, true} {
		cmd, start, done := startProc(t, ignore)
		p, err := OpenProc(cmd.Process.Pid, start)
		if p == nil || err != nil {
			t.Fatalf("open: %v, %v", p, err)
		}
		began := time.Now()
		asked := false
		if err := p.Stop(func() error { asked = true; return errNoShutdown }); err != nil {
			t.Fatal(err)
		}
		took := time.Since(began)
		p.Close()
		<-done
		if !asked {
			t.Error("shutdown was not asked first")
		}
		if ignore && took < StopStep {
			t.Errorf("SIGKILL after %s, before the SIGTERM step's %s", took, StopStep)
		}
		if !ignore && took > StopStep {
			t.Errorf("a VMM that takes SIGTERM stopped after %s", took)
		}
		if Alive(cmd.Process.Pid, start) {
			t.Error("alive after Stop")
		}
	}
}

var errNoShutdown = errors.New("no agent")

// TestParkDetachRelease: what the creator tells its VMM on the
// parent-watch pipe: Park is ParkByte then EOF (the VMM waits for a
// claimer), Detach is DetachByte then EOF (it outlives its creator),
// Release is EOF alone (it shuts the guest down).
func TestParkDetachRelease(t *testing.T) {
	for _, c := range []struct {
		name string
		do   func(*Handle) error
		want string
	}{
		{"park", (*Handle).Park, string(ParkByte)},
		{"detach", (*Handle).Detach, string(DetachByte)},
		{"release", (*Handle).Release, ""},
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		h := &Handle{watch: w}
		if err := c.do(h); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got, err := io.ReadAll(r) // EOF: the creator's end is closed
		r.Close()
		if err != nil || string(got) != c.want {
			t.Errorf("%s: the VMM read %q, %v; want %q then EOF", c.name, got, err, c.want)
		}
	}
}
