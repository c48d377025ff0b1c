package manager

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/msb-dev/msb/launch"
	vmmpkg "github.com/msb-dev/msb/vmm"
)

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if r, err := readRecord(dir); r != nil || err != nil {
		t.Fatalf("missing record: %v, %v", r, err)
	}
	at := time.Now().UTC().Truncate(time.Millisecond)
	in := &Record{ID: "c1", VMRecord: launch.VMRecord{StateDir: "/run/msb/shim/ns/c1", AgentSocket: "/run/msb/shim/ns/agent/x.sock",
		Pid: 42, PidStart: 9, Cgroup: "/ns/c1"}, Rootfs: filepath.Join(dir, "rootfs"), Exit: &ExitRecord{Pid: 42, Status: 3, At: at}}
	if err := WriteRecord(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if out.ID != in.ID || out.StateDir != in.StateDir || out.VMRecord != in.VMRecord || out.Exit == nil || out.Exit.Status != 3 || !out.Exit.At.Equal(at) {
		t.Fatalf("round trip: %+v", out)
	}
	if err := os.WriteFile(filepath.Join(dir, RecordFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readRecord(dir); err == nil {
		t.Fatal("a corrupt record must be an error")
	}
}

func TestOwnStateDir(t *testing.T) {
	t.Setenv("MSB_SHIM_STATE_ROOT", "/run/msb/shim")
	for dir, want := range map[string]bool{
		"/run/msb/shim/default/c1":       true,
		"/run/msb/shim":                  false,
		"/run/msb/shim/../../etc":        false,
		"/run/msb/shimmy/x":              false,
		"":                               false,
		"/":                              false,
		"/run/msb/shim/default/../other": true, // still below the root
	} {
		if got := ownStateDir(dir); got != want {
			t.Errorf("ownStateDir(%q) = %v, want %v", dir, got, want)
		}
	}
}

// TestCleanupBundle: the delete path stops a VMM left running (recognised
// by its pid and start time), removes the state dir, the socket and the record,
// and reports the recorded exit.
func TestCleanupBundle(t *testing.T) {
	root := t.TempDir()
	t.Setenv("MSB_SHIM_STATE_ROOT", root)
	bundle := t.TempDir()
	stateDir := filepath.Join(root, "ns", "c1")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(root, "ns", "agent", "x.sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A stand-in VMM.
	vmm := exec.Command("/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done", "vmm", stateDir)
	if err := vmm.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = vmm.Wait(); close(exited) }()
	time.Sleep(100 * time.Millisecond)
	start, ok := vmmpkg.ProcStart(vmm.Process.Pid)
	if !ok {
		t.Fatal("no start time")
	}
	rec := launch.VMRecord{StateDir: stateDir, AgentSocket: sock, Pid: vmm.Process.Pid, PidStart: start}

	// A process that only has the recorded pid (another start time) is
	// never signalled.
	other := rec
	other.PidStart++
	if err := WriteRecord(bundle, &Record{ID: "c1", VMRecord: other}); err != nil {
		t.Fatal(err)
	}
	if _, err := cleanupBundle(context.Background(), bundle); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		t.Fatal("cleanup stopped a process whose start time is not the record's")
	case <-time.After(200 * time.Millisecond):
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	at := time.Now().UTC().Truncate(time.Second)
	if err := WriteRecord(bundle, &Record{ID: "c1", VMRecord: rec,
		Exit: &ExitRecord{Pid: uint32(vmm.Process.Pid), Status: 7, At: at}}); err != nil {
		t.Fatal(err)
	}
	st, err := cleanupBundle(context.Background(), bundle)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the stray VMM was not stopped")
	}
	if st.ExitStatus != 7 || st.Pid != vmm.Process.Pid || !st.ExitedAt.Equal(at) {
		t.Fatalf("stop status %+v", st)
	}
	for _, p := range []string{stateDir, sock, filepath.Join(bundle, RecordFile)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind", p)
		}
	}

	// Nothing recorded (the shim died before Create wrote anything):
	// killed, and no error.
	st, err = cleanupBundle(context.Background(), t.TempDir())
	if err != nil || st.ExitStatus != vmmpkg.ExitKilled {
		t.Fatalf("empty bundle: %+v, %v", st, err)
	}
}
