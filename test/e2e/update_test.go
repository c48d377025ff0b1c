package e2e

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// An update of a running container's resources (what kubelet's in-place
// resize sends through CRI) within its VM reaches the guest's cgroup; one
// past the VM, which cannot grow, is refused before the guest sees it
// (docs/kubernetes.md), never reported done while the VM stays as it was.
func TestClientUpdatePastVM(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	// 112 MiB plus overhead_mib 128: a 240 MiB VM with 1 vCPU (the test
	// config's vcpus), the pod of the issue.
	task, _ := e.runningTask(t, c, "resize", oci.WithMemoryLimit(112<<20),
		// Its own cgroup namespace and cgroupfs, as Docker's: the guest
		// cgroup's files are in /sys/fs/cgroup.
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.CgroupNamespace}),
		oci.WithMounts([]specs.Mount{{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}}}))
	guest := func(file string) string {
		t.Helper()
		out, stderr, err := e.Ctr("task", "exec", "--exec-id", "cat-"+strings.ReplaceAll(file, ".", "-"), "resize", "sh", "-c", cgroupFile(file))
		if err != nil {
			t.Fatalf("cat %s in the guest: %v: %s%s", file, err, out, stderr)
		}
		return strings.TrimSpace(out)
	}
	update := func(r *specs.LinuxResources) error {
		return task.Update(ctx, client.WithResources(r))
	}
	i64 := func(n int64) *int64 { return &n }
	u64 := func(n uint64) *uint64 { return &n }

	// Lowering, and back up to what the VM gives a container: done.
	for _, limit := range []int64{64 << 20, 112 << 20} {
		if err := update(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(limit)}}); err != nil {
			t.Fatalf("update to %d within the VM: %v", limit, err)
		}
	}
	if got := guest("memory.max"); got != "117440512" {
		t.Fatalf("guest memory.max after the update to 112 MiB: %q", got)
	}
	cpuBefore := guest("cpu.max")

	for _, c := range []struct {
		name string
		r    *specs.LinuxResources
		want []string
	}{
		{"memory 2Gi", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(2 << 30)}},
			[]string{"linux.resources.memory.limit 2147483648", "112 MiB the VM can give", "the VM has 240 MiB", "cannot grow a running VM", "recreate"}},
		{"cpu 2", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(200000), Period: u64(100000)}},
			[]string{"linux.resources.cpu.quota 200000 per period 100000", "2 CPUs", "the VM's 1 vCPUs", "recreate"}},
		{"cpuset 0-1", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-1"}},
			[]string{`linux.resources.cpu.cpus "0-1" names CPU 1`, "1 vCPUs (0-0)"}},
	} {
		err := update(c.r)
		if err == nil {
			t.Errorf("%s: update past the VM accepted", c.name)
			continue
		}
		if !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%s: %v: want FailedPrecondition", c.name, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", c.name, err, w)
			}
		}
	}
	if got := guest("memory.max"); got != "117440512" {
		t.Errorf("guest memory.max after the refused updates: %q, want 117440512 (unchanged)", got)
	}
	if got := guest("cpu.max"); got != cpuBefore {
		t.Errorf("guest cpu.max after the refused updates: %q, want %q (unchanged)", got, cpuBefore)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// A pod member's update is checked against the pod's VM: up to what that
// VM gives a container (more than the member's own share) is done, past
// it refused.
func TestShimPodUpdatePastVM(t *testing.T) {
	e := startShimEnv(t)
	const sb, app = "rs-sb", "rs-app"
	// The pod's limits sum to 200 MiB: a 328 MiB pod VM, 200 of them for
	// containers.
	pid := e.runPodSandbox(t, sb, "--annotation", "io.kubernetes.cri.sandbox-memory="+strconv.Itoa(200<<20))
	a := append([]string{"run", "-d", "--runtime", msbRuntimeType, "--memory-limit", strconv.Itoa(64 << 20)}, podAnn(sb, "container")...)
	e.MustCtr(append(a, "--with-ns", "network:/proc/"+strconv.Itoa(pid)+"/ns/net", e.image, app, "sleep", "600")...)
	t.Cleanup(func() { e.remove(t, app) })
	e.waitStatus(t, app, "RUNNING", time.Minute)

	c, ctx := e.goClient(t)
	ctr, err := c.LoadContainer(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	update := func(limit int64) error {
		return task.Update(ctx, client.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}))
	}
	// More than the member's own 64 MiB and a default VM's 128.
	if err := update(150 << 20); err != nil {
		t.Fatalf("update of the member to 150 MiB, within the pod VM: %v", err)
	}
	err = update(2 << 30)
	if err == nil {
		t.Fatal("update of the member to 2 GiB, past the pod VM: accepted")
	}
	for _, w := range []string{"linux.resources.memory.limit 2147483648", "200 MiB the VM can give", "the VM has 328 MiB", "recreate"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("update: %q lacks %q", err, w)
		}
	}
}
