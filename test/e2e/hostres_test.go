package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/vmm"
	"github.com/msb-dev/msb/vmmproc"
)

// hostCgroupParent is a cgroup parent of this test process's own, removed
// (with whatever is left below it) when the test ends.
func hostCgroupParent(t *testing.T) string {
	t.Helper()
	if cgroups.Mode() == cgroups.Unavailable {
		t.Skip("no cgroup hierarchy mounted")
	}
	p := fmt.Sprintf("/msb-e2e-%d", os.Getpid())
	t.Cleanup(func() {
		for _, d := range cgroupDirs(p) {
			_ = os.Remove(d)
		}
	})
	return p
}

// cgroupDirs lists the directories of cgroup path p that exist: one per
// v1 hierarchy, or the v2 one.
func cgroupDirs(p string) []string {
	if cgroups.Mode() == cgroups.Unified {
		if _, err := os.Stat("/sys/fs/cgroup" + p); err == nil {
			return []string{"/sys/fs/cgroup" + p}
		}
		return nil
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + p)
	return dirs
}

// hostCgroupFile reads a file of cgroup p: v1 from controller's hierarchy.
func hostCgroupFile(t *testing.T, p, controller, v1, v2 string) string {
	t.Helper()
	f := filepath.Join("/sys/fs/cgroup", controller, p, v1)
	if cgroups.Mode() == cgroups.Unified {
		f = filepath.Join("/sys/fs/cgroup", p, v2)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// checkHostPlace checks that pid is in cgroup p for the memory and cpu
// controllers (v1) or in the unified hierarchy (v2), and has oom_score_adj.
func checkHostPlace(t *testing.T, what string, pid int, p string, oomScoreAdj int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"0::" + p}
	if cgroups.Mode() != cgroups.Unified {
		want = []string{":memory:" + p, ":cpu:" + p}
	}
	for _, w := range want {
		if !strings.Contains(string(b), w+"\n") {
			t.Errorf("%s (pid %d) is not in %s: /proc/%d/cgroup:\n%s", what, pid, w, pid, b)
		}
	}
	s, _ := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if got := strings.TrimSpace(string(s)); got != strconv.Itoa(oomScoreAdj) {
		t.Errorf("%s (pid %d): oom_score_adj %s, want %d", what, pid, got, oomScoreAdj)
	}
}

// waitCgroupGone waits up to 15 s for cgroup p to be removed everywhere.
func waitCgroupGone(t *testing.T, p, after string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(cgroupDirs(p)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("cgroup left %s: %v", after, cgroupDirs(p))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestHostCgroup runs a container whose spec names a cgroup, limits and an
// OOM score with msb-runtime: its VMM process and qemu run in that cgroup
// with the VM's limits and the spec's oom_score_adj (ADR 014); the cgroup
// goes when the run ends, and when msb-runtime is SIGKILLed.
func TestHostCgroup(t *testing.T) {
	requireVM(t)
	parent := hostCgroupParent(t)
	limit, quota, period, shares, adj := int64(192<<20), int64(150000), uint64(100000), uint64(512), 567
	for _, kill := range []bool{false, true} {
		cg := parent + "/run-" + strconv.FormatBool(kill)
		b := bundle(t, []string{"sh", "-c", "echo ready; read x; echo bye"}, func(s *specs.Spec) {
			s.Linux.CgroupsPath = cg
			s.Linux.Resources = &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &limit},
				CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period, Shares: &shares},
			}
			s.Process.OOMScoreAdj = &adj
		})
		root := stateRoot(t)
		cmd := runtimeCmd(root, "run", "--bundle", b, "hostres")
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		out := bufio.NewReader(stdout)
		if line, err := out.ReadString('\n'); line != "ready\n" {
			_ = cmd.Process.Kill()
			t.Fatalf("first line %q, %v; stderr: %s", line, err, stderr.String())
		}
		vmmPid := childNamed(t, cmd.Process.Pid, "msb-runtime")
		qemuPid := childNamed(t, vmmPid, "qemu-system")
		checkHostPlace(t, "VMM process", vmmPid, cg, adj)
		checkHostPlace(t, "qemu", qemuPid, cg, adj)

		// VM: 192 MiB limit + 128 MiB guest overhead, 2 vCPUs (1.5 CPUs).
		mem, _ := strconv.ParseInt(hostCgroupFile(t, cg, "memory", "memory.limit_in_bytes", "memory.max"), 10, 64)
		tcg := *vmmproc.HostLimits(2, 320, &vmm.HostResources{}, vmm.BackendQEMU, true).Memory.Limit
		kvm := *vmmproc.HostLimits(2, 320, &vmm.HostResources{}, vmm.BackendQEMU, false).Memory.Limit
		t.Logf("VMM %d, qemu %d in %s: memory limit %d MiB, oom_score_adj %d", vmmPid, qemuPid, cg, mem>>20, adj)
		if mem != tcg && mem != kvm {
			t.Errorf("memory limit %d MiB, want %d (TCG) or %d (KVM)", mem>>20, tcg>>20, kvm>>20)
		}
		if cgroups.Mode() == cgroups.Unified {
			if got := hostCgroupFile(t, cg, "", "", "cpu.max"); got != "250000 100000" {
				t.Errorf("cpu.max %q", got)
			}
		} else {
			q, p := hostCgroupFile(t, cg, "cpu", "cpu.cfs_quota_us", ""), hostCgroupFile(t, cg, "cpu", "cpu.cfs_period_us", "")
			sh := hostCgroupFile(t, cg, "cpu", "cpu.shares", "")
			if q != "250000" || p != "100000" || sh != "512" {
				t.Errorf("cpu quota %s/%s shares %s, want 250000/100000, 512", q, p, sh)
			}
		}

		if kill {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
			waitCgroupGone(t, cg, "after SIGKILL of msb-runtime")
			assertNothingLeft(t, root)
			continue
		}
		fmt.Fprintln(stdin, "x")
		if rest, _ := out.ReadString('\n'); rest != "bye\n" {
			t.Errorf("after input: %q", rest)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("run: %v; stderr: %s", err, stderr.String())
		}
		waitCgroupGone(t, cg, "after the run")
		assertNothingLeft(t, root)
	}
}

// TestShimHostCgroup: under the shim, a VM runs in the cgroup ctr names
// (--cgroup), with oom_score_adj 0 as the spec names none (the shim keeps
// containerd's + 1); the cgroup goes with the task's delete and when the
// shim is SIGKILLed.
func TestShimHostCgroup(t *testing.T) {
	e := startShimEnv(t)
	parent := hostCgroupParent(t)
	for _, id := range []string{"deleted", "shim-killed"} {
		cg := parent + "/" + id
		e.MustCtr("run", "-d", "--runtime", msbRuntimeType, "--cgroup", cg, e.image, id, "sleep", "1000")
		e.waitStatus(t, id, "RUNNING", time.Minute)
		vmmPid := e.vmmPid(t, id)
		checkHostPlace(t, "VMM process", vmmPid, cg, 0)
		checkHostPlace(t, "qemu", childNamed(t, vmmPid, "qemu-system"), cg, 0)
		if id == "deleted" {
			e.remove(t, id)
			waitCgroupGone(t, cg, "after task delete")
			continue
		}
		e.killShim(t, id)
		waitCgroupGone(t, cg, "after SIGKILL of the shim")
		e.assertClean(t)
		_, _, _ = e.Ctr("task", "delete", id)
		e.MustCtr("container", "delete", id)
		e.waitShimDeletes()
	}

	// A pod's VM is the sandbox's: it runs in the sandbox's cgroup (below
	// kubelet's pod cgroup); an app container's cgroupsPath is not made.
	const sb, app = "pod-sb", "pod-app"
	ann := func(typ, cg string) []string {
		return []string{"run", "-d", "--runtime", msbRuntimeType, "--cgroup", parent + "/pod/" + cg,
			"--annotation", "io.kubernetes.cri.container-type=" + typ, "--annotation", "io.kubernetes.cri.sandbox-id=" + sb}
	}
	e.MustCtr(append(ann("sandbox", sb), e.image, sb, "sleep", "600")...)
	e.waitStatus(t, sb, "RUNNING", time.Minute)
	e.MustCtr(append(ann("container", app), e.image, app, "sleep", "600")...)
	e.waitStatus(t, app, "RUNNING", time.Minute)
	checkHostPlace(t, "pod VMM process", e.vmmPid(t, sb), parent+"/pod/"+sb, 0)
	if d := cgroupDirs(parent + "/pod/" + app); len(d) > 0 {
		t.Errorf("app container's cgroup made: %v", d)
	}
	e.remove(t, app)
	e.remove(t, sb)
	waitCgroupGone(t, parent+"/pod/"+sb, "after the pod's delete")
	for _, d := range cgroupDirs(parent + "/pod") {
		_ = os.Remove(d)
	}
}
