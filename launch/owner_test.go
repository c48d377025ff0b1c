package launch

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/specconv"
)

// proc starts a process (a sleep, run by args before it) and returns its pid.
func proc(t *testing.T, args ...string) int {
	t.Helper()
	argv := append(args, "sleep", "60")
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Skipf("%v: %v", cmd.Args, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

func spec(ns ...specs.LinuxNamespace) *specs.Spec {
	return &specs.Spec{Linux: &specs.Linux{Namespaces: ns}}
}

// TestFindJoin: ipc, uts and pid are named only by the exact
// /proc/<pid>/ns path of a candidate's pid; the network namespace by
// any path, never the host's.
func TestFindJoin(t *testing.T) {
	own := proc(t)
	other := proc(t) // not an msb container
	cands := []JoinCandidate{{ID: "infra", VM: "infra", Pid: own}}
	file := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns   specs.LinuxNamespace
		want bool
	}{
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: fmt.Sprintf("/proc/%d/ns/ipc", own)}, true},
		{specs.LinuxNamespace{Type: specs.UTSNamespace, Path: fmt.Sprintf("/proc/%d/ns/uts", own)}, true},
		// The same (host) namespace through a process that is no msb
		// container's, or through the host's init: not named.
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: fmt.Sprintf("/proc/%d/ns/ipc", other)}, false},
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"}, false},
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/proc/self/ns/ipc"}, false},
		// The owner's pid, but the path names another type's namespace.
		{specs.LinuxNamespace{Type: specs.UTSNamespace, Path: fmt.Sprintf("/proc/%d/ns/ipc", own)}, false},
		// Its network namespace is the host's here: never an owner's.
		{specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: fmt.Sprintf("/proc/%d/ns/net", own)}, false},
		{specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/proc/self/ns/net"}, false},
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: file}, false},
		{specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/nonexistent"}, false},
	} {
		vm, joined, err := FindJoin(spec(tc.ns), cands)
		if err != nil || (vm == "infra") != tc.want || (len(joined) == 1) != tc.want {
			t.Errorf("FindJoin(%s %s) = %q %v %v, want owner %v", tc.ns.Type, tc.ns.Path, vm, joined, err, tc.want)
		}
	}
}

// TestFindJoinNetNS: a network namespace of the owner's pid (not the
// host's) names the owner by any path; a member's pid names its VM;
// paths of two VMs are refused.
func TestFindJoinNetNS(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	own := proc(t, "unshare", "--net")
	other := proc(t, "unshare", "--net")
	hostNet, _ := nsIdentOf("/proc/self/ns/net")
	// unshare execs sleep: a pid is in its new namespace once it runs.
	for _, pid := range []int{own, other} {
		for i := 0; i < 100; i++ {
			if id, _ := nsIdentOf(fmt.Sprintf("/proc/%d/ns/net", pid)); id != hostNet {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	member := proc(t)
	cands := []JoinCandidate{{ID: "infra", VM: "infra", Pid: own}, {ID: "other", VM: "other", Pid: other}, {ID: "m", VM: "infra", Pid: member}}
	net := func(pid int) specs.LinuxNamespace {
		return specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: fmt.Sprintf("/proc/%d/ns/net", pid)}
	}
	ipc := func(pid int) specs.LinuxNamespace {
		return specs.LinuxNamespace{Type: specs.IPCNamespace, Path: fmt.Sprintf("/proc/%d/ns/ipc", pid)}
	}
	if vm, joined, err := FindJoin(spec(net(own), specs.LinuxNamespace{Type: specs.MountNamespace}), cands); err != nil || vm != "infra" || len(joined) != 1 {
		t.Fatalf("infra's net: %q %v %v", vm, joined, err)
	}
	if vm, _, err := FindJoin(spec(net(other)), cands); err != nil || vm != "other" {
		t.Fatalf("other's net: %q %v", vm, err)
	}
	if vm, joined, err := FindJoin(spec(net(own), ipc(member)), cands); err != nil || vm != "infra" || len(joined) != 2 {
		t.Fatalf("infra's net and its member's ipc: %q %v %v", vm, joined, err)
	}
	if _, _, err := FindJoin(spec(net(own), ipc(other)), cands); err == nil || !strings.Contains(err.Error(), "two msb VMs") {
		t.Fatalf("two VMs: %v, want refused", err)
	}
}

// TestCheckMember: a member joins within its owner's VM size; a size,
// limit or backend of its own is refused, naming the field.
func TestCheckMember(t *testing.T) {
	size := specconv.VMSize{VCPUs: 1, MemoryMiB: 256, OverheadMiB: 64}
	ann := map[string]string{specconv.AnnotationMemoryMiB: "256"}
	lim := func(n int64) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &n}}}}
	}
	if err := CheckMember(lim(100<<20), "infra", ann, size); err != nil {
		t.Errorf("a limit within the VM: %v", err)
	}
	if err := CheckMember(&specs.Spec{Annotations: map[string]string{specconv.AnnotationMemoryMiB: "256"}}, "infra", ann, size); err != nil {
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
		err := CheckMember(tc.spec, "infra", ann, size)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"infra"`) {
			t.Errorf("%s: %v, want a refusal naming %s and the owner", name, err, tc.want)
		}
	}
}
