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
// past what the VM can grow to (its vCPUs, its memory headroom: ADR 031)
// is refused before the guest sees it (docs/kubernetes.md), never reported
// done while the VM stays as it was.
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
			[]string{"linux.resources.memory.limit 2147483648", "480 MiB this VM can grow to", "resize_memory_factor", "it has 240 MiB now", "recreate"}},
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

// A pod member's update is checked against the pod's VM: one that grows
// the VM within its headroom is done, one past it refused.
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
	// 150 MiB grew the 328 MiB VM by 86 MiB; it can grow to 656.
	for _, w := range []string{"linux.resources.memory.limit 2147483648", "656 MiB this VM can grow to", "it has 414 MiB now", "recreate"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("update: %q lacks %q", err, w)
		}
	}
}

// A pod VM's memory follows an in-place resize of a member's limit (ADR
// 031): up within its headroom the guest sees more memory (MemTotal), the
// VM's host cgroup allows more and the member's guest cgroup says the new
// limit; down, all three follow back; past the headroom the update is
// refused naming it, and nothing changes. The VM is the same throughout.
func TestShimPodMemoryResize(t *testing.T) {
	e := startShimEnv(t)
	parent := hostCgroupParent(t)
	const sb, app = "mem-sb", "mem-app"
	sbCg := parent + "/pod/" + sb
	// The pod's limits sum to 200 MiB: a 328 MiB VM (overhead_mib 128)
	// that may grow to 656 (resize_memory_factor 2).
	pid := e.runPodSandbox(t, sb, "--cgroup", sbCg, "--annotation", "io.kubernetes.cri.sandbox-memory="+strconv.Itoa(200<<20))
	c, ctx := e.goClient(t)
	task, _ := e.runningTask(t, c, app, oci.WithMemoryLimit(200<<20),
		oci.WithAnnotations(map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sb}),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/proc/" + strconv.Itoa(pid) + "/ns/net"}),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.CgroupNamespace}),
		oci.WithMounts([]specs.Mount{{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}}}))
	n := 0
	guest := func(cmd string) string {
		t.Helper()
		n++
		out, stderr, err := e.Ctr("task", "exec", "--exec-id", "x"+strconv.Itoa(n), app, "sh", "-c", cmd)
		if err != nil {
			t.Fatalf("%s in the guest: %v: %s%s", cmd, err, out, stderr)
		}
		return strings.TrimSpace(out)
	}
	bootID := guest("cat /proc/sys/kernel/random/boot_id")
	memTotalMiB := func() int {
		kb, _ := strconv.Atoi(guest(`awk '/^MemTotal:/ {print $2}' /proc/meminfo`))
		return kb >> 10
	}
	// waitMemTotal waits for the balloon to settle within [lo, hi] MiB.
	waitMemTotal := func(what string, lo, hi int) int {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			m := memTotalMiB()
			if m >= lo && m <= hi {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: guest MemTotal %d MiB, want %d..%d", what, m, lo, hi)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	hostLimit := func() int64 {
		n, err := strconv.ParseInt(hostCgroupFile(t, sbCg, "memory", "memory.limit_in_bytes", "memory.max"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	update := func(limit int64) error {
		return task.Update(ctx, client.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}))
	}
	const mib = 1 << 20

	// At start the balloon holds the headroom: the guest sees less than
	// its 328 MiB, not the 656 qemu has.
	m0 := waitMemTotal("at start", 200, 328)
	l0 := hostLimit()
	t.Logf("at start: MemTotal %d MiB, host limit %d MiB", m0, l0/mib)

	// Up by 200 MiB: a 528 MiB VM.
	if err := update(400 * mib); err != nil {
		t.Fatalf("update to 400 MiB, within the headroom: %v", err)
	}
	if got := guest(cgroupFile("memory.max")); got != strconv.Itoa(400*mib) {
		t.Errorf("guest memory.max after the grow: %q", got)
	}
	if l := hostLimit(); l != l0+200*mib {
		t.Errorf("host cgroup limit after the grow: %d MiB, want %d", l/mib, (l0+200*mib)/mib)
	}
	m1 := waitMemTotal("after the grow", m0+195, m0+205)
	t.Logf("after the grow to 528 MiB: MemTotal %d MiB, host limit %d MiB", m1, hostLimit()/mib)

	// Past the headroom: refused, nothing moves.
	err := update(2 << 30)
	if err == nil || !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("update to 2 GiB, past the headroom: %v, want FailedPrecondition", err)
	}
	for _, w := range []string{"linux.resources.memory.limit 2147483648", "656 MiB this VM can grow to", "resize_memory_factor", "it has 528 MiB now", "at most 528 MiB"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal %q lacks %q", err, w)
		}
	}
	if got := guest(cgroupFile("memory.max")); got != strconv.Itoa(400*mib) {
		t.Errorf("guest memory.max after the refusal: %q", got)
	}
	if l := hostLimit(); l != l0+200*mib {
		t.Errorf("host cgroup limit after the refusal: %d MiB", l/mib)
	}

	// Down by 300 MiB: a 228 MiB VM; the guest gives the memory back.
	if err := update(100 * mib); err != nil {
		t.Fatalf("update down to 100 MiB: %v", err)
	}
	if got := guest(cgroupFile("memory.max")); got != strconv.Itoa(100*mib) {
		t.Errorf("guest memory.max after the shrink: %q", got)
	}
	if l := hostLimit(); l != l0-100*mib {
		t.Errorf("host cgroup limit after the shrink: %d MiB, want %d", l/mib, (l0-100*mib)/mib)
	}
	m2 := waitMemTotal("after the shrink", m0-105, m0-95)
	t.Logf("after the shrink to 228 MiB: MemTotal %d MiB, host limit %d MiB", m2, hostLimit()/mib)
	if got := guest("cat /proc/sys/kernel/random/boot_id"); got != bootID {
		t.Errorf("the guest rebooted: boot id %s, was %s", got, bootID)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}
