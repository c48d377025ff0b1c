package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeKVMHost points the probe at a KVM device that opens, a cache in a
// temp dir and a qemu script that appends a line to a counter file on each
// run before doing body.
func fakeKVMHost(t *testing.T, body string) (qemu, runs string) {
	t.Helper()
	dir := t.TempDir()
	dev := filepath.Join(dir, "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	oldDev, oldDir, oldTimeout := kvmDevice, kvmProbeDir, kvmProbeTimeout
	kvmDevice, kvmProbeDir, kvmProbeTimeout = dev, filepath.Join(dir, "run", "kvm-probe"), 2*time.Second
	t.Cleanup(func() { kvmDevice, kvmProbeDir, kvmProbeTimeout = oldDev, oldDir, oldTimeout })
	runs = filepath.Join(dir, "runs")
	qemu = filepath.Join(dir, "qemu")
	script := "#!/bin/sh\necho run >>" + runs + "\n" + body + "\n"
	if err := os.WriteFile(qemu, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return qemu, runs
}

func countRuns(t *testing.T, runs string) int {
	b, err := os.ReadFile(runs)
	if os.IsNotExist(err) {
		return 0
	} else if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "run\n")
}

func TestKVMProbeCachesPerBoot(t *testing.T) {
	qemu, runs := fakeKVMHost(t, `echo "[    0.000000] Linux version 6.1"; exec sleep 60`)
	for i := 0; i < 3; i++ {
		if ok, why := KVMUsable(qemu, "/vmlinux"); !ok {
			t.Fatalf("call %d: KVM not usable: %s", i, why)
		}
	}
	if n := countRuns(t, runs); n != 1 {
		t.Fatalf("probe ran %d times, want once per boot", n)
	}
	// A verdict from another boot is not trusted.
	v := newKVMVerdict(qemu, "/vmlinux")
	if err := os.WriteFile(v.path, []byte("another-boot "+qemu+" /vmlinux\nbroken\nold\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, _ := KVMUsable(qemu, "/vmlinux"); !ok || countRuns(t, runs) != 2 {
		t.Fatalf("stale verdict used: ok=%v runs=%d", ok, countRuns(t, runs))
	}
	// A real boot that failed under KVM overrides a passed probe.
	RecordKVMBroken(qemu, "/vmlinux", "guest hung")
	if ok, why := KVMUsable(qemu, "/vmlinux"); ok || why != "guest hung" || countRuns(t, runs) != 2 {
		t.Fatalf("after RecordKVMBroken: ok=%v why=%q runs=%d", ok, why, countRuns(t, runs))
	}
}

func TestKVMProbeHangingGuest(t *testing.T) {
	qemu, _ := fakeKVMHost(t, `exec sleep 60`)
	start := time.Now()
	ok, why := KVMUsable(qemu, "/vmlinux")
	if ok || !strings.Contains(why, "printed nothing") {
		t.Fatalf("hanging guest: ok=%v why=%q", ok, why)
	}
	if d := time.Since(start); d > kvmProbeTimeout+3*time.Second {
		t.Fatalf("probe took %s, its bound is %s", d, kvmProbeTimeout)
	}
	if _, _, found := newKVMVerdict(qemu, "/vmlinux").read(); !found {
		t.Fatal("verdict not cached")
	}
}

func TestKVMProbeAbortingQEMU(t *testing.T) {
	qemu, _ := fakeKVMHost(t, `echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0" >&2; exit 1`)
	ok, why := KVMUsable(qemu, "/vmlinux")
	if ok || !strings.Contains(why, "failed to set MSR") {
		t.Fatalf("aborting qemu: ok=%v why=%q", ok, why)
	}
}

func TestKVMProbeNoDevice(t *testing.T) {
	qemu, runs := fakeKVMHost(t, `echo "Linux version"`)
	kvmDevice = filepath.Join(t.TempDir(), "none")
	if ok, why := KVMUsable(qemu, "/vmlinux"); ok || !strings.Contains(why, "no such file") {
		t.Fatalf("missing device: ok=%v why=%q", ok, why)
	}
	if countRuns(t, runs) != 0 {
		t.Fatal("probed without a KVM device")
	}
}

func TestKVMProbePerBinaryAndKernel(t *testing.T) {
	qemu, runs := fakeKVMHost(t, `echo "Linux version 6.1"`)
	RecordKVMBroken("/other/qemu", "/vmlinux", "other binary")
	RecordKVMBroken(qemu, "/other/vmlinux", "other kernel")
	if ok, why := KVMUsable(qemu, "/vmlinux"); !ok || countRuns(t, runs) != 1 {
		t.Fatalf("another binary's or kernel's verdict used: ok=%v why=%q", ok, why)
	}
}
