package ociruntime

import (
	"github.com/msb-dev/msb/ociruntime/relayio"

	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/specconv"
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

func TestOwnerOf(t *testing.T) {
	root := t.TempDir()
	own := fakeContainer(t, root, "infra")
	other := exec.Command("sleep", "60") // not an msb container
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	hostNet, err := nsIdentOf("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(root, "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cands := liveContainers(Options{Root: root})
	if len(cands) != 1 {
		t.Fatalf("live containers: %d, want 1", len(cands))
	}
	for _, tc := range []struct {
		ns   specs.LinuxNamespace
		want bool
	}{
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: fmt.Sprintf("/proc/%d/ns/ipc", own.rec.Pid)}, true},
		{specs.LinuxNamespace{Type: specs.UTSNamespace, Path: fmt.Sprintf("/proc/%d/ns/uts", own.rec.Pid)}, true},
		// The same (host) namespace through a process that is no msb
		// container's, or through the host's init: refused.
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: fmt.Sprintf("/proc/%d/ns/ipc", other.Process.Pid)}, false},
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"}, false},
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/proc/self/ns/ipc"}, false},
		// The owner's pid, but the path names another type's namespace.
		{specs.LinuxNamespace{Type: specs.UTSNamespace, Path: fmt.Sprintf("/proc/%d/ns/ipc", own.rec.Pid)}, false},
		// Its network namespace is the host's here: never an owner's.
		{specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: fmt.Sprintf("/proc/%d/ns/net", own.rec.Pid)}, false},
		{specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/proc/self/ns/net"}, false},
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: file}, false},
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/nonexistent"}, false},
	} {
		if got := ownerOf(cands, tc.ns, hostNet); (got != nil) != tc.want {
			t.Errorf("ownerOf(%s %s) = %v, want owner %v", tc.ns.Type, tc.ns.Path, got != nil, tc.want)
		}
	}

	// A reused pid (another start time) is no longer the container.
	own.rec.PidStart++
	if err := own.save(); err != nil {
		t.Fatal(err)
	}
	if c := liveContainers(Options{Root: root}); len(c) != 0 {
		t.Errorf("a record whose pid was reused is live")
	}
}

// TestOwnerOfNetNS: a network namespace of the owner's VMM (not the
// host's) names the owner by any path, /proc/<pid>/ns/net or a bind
// mount of it as Podman gives it.
func TestOwnerOfNetNS(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	root := t.TempDir()
	own := fakeContainer(t, root, "infra", "unshare", "--net")
	other := fakeContainer(t, root, "other", "unshare", "--net")
	hostNet, _ := nsIdentOf("/proc/self/ns/net")
	cands := liveContainers(Options{Root: root})
	path := fmt.Sprintf("/proc/%d/ns/net", own.rec.Pid)
	// unshare execs sleep: a pid is in its new namespace once it runs.
	for _, c := range []*container{own, other} {
		for i := 0; i < 100; i++ {
			if id, _ := nsIdentOf(fmt.Sprintf("/proc/%d/ns/net", c.rec.Pid)); id != hostNet {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if got := ownerOf(cands, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path}, hostNet); got == nil || got.rec.ID != "infra" {
		t.Fatalf("ownerOf(%s) = %v, want infra", path, got)
	}
	if got := ownerOf(cands, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: fmt.Sprintf("/proc/%d/ns/net", other.rec.Pid)}, hostNet); got == nil || got.rec.ID != "other" {
		t.Fatalf("ownerOf(other's net) = %v, want other", got)
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

// TestCheckMemberSpec: a member joins within its owner's VM size; a
// size, limit or backend of its own is refused, naming the field.
func TestCheckMemberSpec(t *testing.T) {
	owner := &container{rec: record{ID: "infra", VM: specconv.VMSize{VCPUs: 1, MemoryMiB: 256, OverheadMiB: 64},
		Spec: specs.Spec{Annotations: map[string]string{specconv.AnnotationMemoryMiB: "256"}}}}
	lim := func(n int64) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &n}}}}
	}
	if err := checkMemberSpec(lim(100<<20), owner); err != nil {
		t.Errorf("a limit within the VM: %v", err)
	}
	if err := checkMemberSpec(&specs.Spec{Annotations: map[string]string{specconv.AnnotationMemoryMiB: "256"}}, owner); err != nil {
		t.Errorf("the owner's own size: %v", err)
	}
	for name, tc := range map[string]struct {
		spec *specs.Spec
		want string
	}{
		"limit past the VM": {lim(1 << 30), "linux.resources.memory.limit"},
		"own size":          {&specs.Spec{Annotations: map[string]string{specconv.AnnotationVCPUs: "2"}}, specconv.AnnotationVCPUs},
		"other memory":      {&specs.Spec{Annotations: map[string]string{specconv.AnnotationMemoryMiB: "512"}}, specconv.AnnotationMemoryMiB},
	} {
		err := checkMemberSpec(tc.spec, owner)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"infra"`) {
			t.Errorf("%s: %v, want a refusal naming %s and the owner", name, err, tc.want)
		}
	}
}
