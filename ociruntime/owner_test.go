package ociruntime

import (
	"github.com/msb-dev/msb/ociruntime/relayio"

	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/vmm"
)

// fakeContainer records a running process (a sleep, started with args
// before it) as container id under root, as create records a VMM.
func fakeContainer(t *testing.T, root, id string, args ...string) *container {
	t.Helper()
	cmd := exec.Command(append(args, "sleep", "60")[0], append(args, "sleep", "60")[1:]...)
	if err := cmd.Start(); err != nil {
		t.Skipf("%v: %v", cmd.Args, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	start, ok := vmm.ProcStart(cmd.Process.Pid)
	if !ok {
		t.Fatal("no start time")
	}
	c := &container{dir: vmm.StateDirPath(root, id), rec: record{ID: id, VMRecord: launch.VMRecord{Pid: cmd.Process.Pid, PidStart: start}, Pod: true}}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := c.save(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestLiveContainers: a record whose pid was reused (another start
// time) is no longer a live container, so no spec can name it.
func TestLiveContainers(t *testing.T) {
	root := t.TempDir()
	own := fakeContainer(t, root, "infra")
	if c := liveContainers(Options{Root: root}); len(c) != 1 {
		t.Fatalf("live containers: %d, want 1", len(c))
	}
	own.rec.PidStart++
	if err := own.save(); err != nil {
		t.Fatal(err)
	}
	if c := liveContainers(Options{Root: root}); len(c) != 0 {
		t.Errorf("a record whose pid was reused is live")
	}
}

// TestCreateRefusesHostNamespace: a namespace path of a process that is
// no msb container's is refused with specconv's error, and nothing is
// left.
func TestCreateRefusesHostNamespace(t *testing.T) {
	root := t.TempDir()
	fakeContainer(t, root, "infra")
	bundle := t.TempDir()
	if err := os.Mkdir(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := specs.Spec{
		Version: specs.Version, Root: &specs.Root{Path: "rootfs"},
		Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.NetworkNamespace}, {Type: specs.PIDNamespace}, {Type: specs.MountNamespace},
			{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"},
		}},
	}
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{Root: root, Config: config.Default()}
	err := Create(context.Background(), o, "member", CreateOptions{Bundle: bundle}, relayio.Files())
	if err == nil || !strings.Contains(err.Error(), `"/proc/1/ns/ipc": a VM cannot join a host namespace`) {
		t.Fatalf("create: %v, want the host namespace refused", err)
	}
	if _, err := os.Stat(vmm.StateDirPath(root, "member")); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
}
