package e2e

import (
	"strings"
	"syscall"
	"testing"

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
