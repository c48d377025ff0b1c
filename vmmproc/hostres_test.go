package vmmproc

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/msb-dev/msb/vmm"
)

func TestHostLimits(t *testing.T) {
	h := &vmm.HostResources{CPUShares: 512}
	r := HostLimits(2, 384, h, vmm.BackendQEMU, true)
	if got, want := *r.Memory.Limit, int64(384+hostOverheadBaseMiB+hostOverheadTCGMiB)<<20; got != want {
		t.Errorf("memory limit %d, want %d", got, want)
	}
	if *r.CPU.Quota != 250000 || *r.CPU.Period != 100000 || *r.CPU.Shares != 512 {
		t.Errorf("cpu %d/%d shares %d, want 250000/100000 shares 512", *r.CPU.Quota, *r.CPU.Period, *r.CPU.Shares)
	}
	if got := *HostLimits(1, 256, &vmm.HostResources{}, vmm.BackendLibkrun, false).Memory.Limit; got != int64(256+hostOverheadBaseMiB)<<20 {
		t.Errorf("libkrun limit %d MiB", got>>20)
	}
	if got := *HostLimits(1, 256, &vmm.HostResources{OverheadMiB: 50}, vmm.BackendQEMU, true).Memory.Limit; got != 306<<20 {
		t.Errorf("configured overhead: limit %d MiB, want 306", got>>20)
	}
	if r := HostLimits(1, 256, &vmm.HostResources{}, vmm.BackendQEMU, false); r.CPU.Shares != nil {
		t.Errorf("shares set without the spec's: %d", *r.CPU.Shares)
	}
}

// TestEnterV2 runs the cgroup v2 path against a directory laid out like
// /sys/fs/cgroup (no real v2 hierarchy on the build hosts, which are cgroup
// v1): the group is made below the root with the limits in v2 files, the
// controllers are enabled in the parents, this process's pid is written to
// cgroup.procs, and leave moves it back and removes the group.
func TestEnterV2(t *testing.T) {
	root := t.TempDir()
	old := v2Root
	v2Root = root
	t.Cleanup(func() { v2Root = old })
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	write(filepath.Join(root, "cgroup.controllers"), "cpuset cpu io memory pids")
	write(filepath.Join(root, "cgroup.subtree_control"), "")
	write(filepath.Join(root, "kubepods", "cgroup.subtree_control"), "")

	res := HostLimits(2, 384, &vmm.HostResources{CPUShares: 1024}, vmm.BackendQEMU, false)
	cg, missing, err := enterV2("/kubepods/c1", res, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 0 {
		t.Errorf("missing %v", missing)
	}
	pid := strconv.Itoa(os.Getpid())
	for file, want := range map[string]string{
		"kubepods/c1/memory.max":          strconv.Itoa((384 + hostOverheadBaseMiB) << 20),
		"kubepods/c1/cpu.max":             "250000 100000",
		"kubepods/c1/cpu.weight":          "100", // shares 1024, as cgroup2.ToResources converts them
		"kubepods/c1/pids.max":            strconv.Itoa(hostPidsMax),
		"kubepods/c1/cgroup.procs":        pid,
		"kubepods/cgroup.subtree_control": "+cpu +memory +pids",
		"cgroup.subtree_control":          "+cpu +memory +pids",
		"cgroup.controllers":              "cpuset cpu io memory pids",
	} {
		if got := read(file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	// The kernel empties cgroup.procs when the process moves; a plain
	// directory does not.
	write(filepath.Join(root, "kubepods/c1/cgroup.procs"), "")
	var logs []string
	cg.leave(func(f string, a ...any) { logs = append(logs, f) })
	if read("cgroup.procs") != pid {
		t.Errorf("not moved back to its own cgroup: %q", read("cgroup.procs"))
	}
	if _, err := os.Stat(filepath.Join(root, "kubepods/c1")); err == nil || len(logs) > 0 {
		t.Errorf("group not removed (%v), logs %q", err, logs)
	}
}

func TestV2MissingControllers(t *testing.T) {
	root := t.TempDir()
	old := v2Root
	v2Root = root
	t.Cleanup(func() { v2Root = old })
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpu pids\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cgroup.subtree_control"} {
		_ = os.WriteFile(filepath.Join(root, f), nil, 0o644)
	}
	_, missing, err := enterV2("/c2", HostLimits(1, 256, &vmm.HostResources{}, vmm.BackendQEMU, true), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(missing, " ") != "memory" {
		t.Errorf("missing %v, want memory", missing)
	}
	if _, err := os.Stat(filepath.Join(root, "c2", "memory.max")); err == nil {
		t.Error("memory.max written without a memory controller")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "c2", "cpu.max")); string(b) != "150000 100000" {
		t.Errorf("cpu.max %q", b)
	}
}
