package kvmprobe

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeKVMHost points the probe at a KVM device that opens, a cache in a
// temp dir and a qemu script that appends a line to a counter file on each
// run before doing body. testKernel is a kernel file for it.
func fakeKVMHost(t *testing.T, body string) (qemu, runs string) {
	t.Helper()
	dir := t.TempDir()
	dev := filepath.Join(dir, "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	oldDev, oldDir, oldTimeout := Device, kvmProbeDir, kvmProbeTimeout
	Device, kvmProbeDir, kvmProbeTimeout = dev, filepath.Join(dir, "run", "kvm-probe"), 2*time.Second
	t.Cleanup(func() { Device, kvmProbeDir, kvmProbeTimeout = oldDev, oldDir, oldTimeout })
	testKernel = filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(testKernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	runs = filepath.Join(dir, "runs")
	qemu = filepath.Join(dir, "qemu")
	script := "#!/bin/sh\necho run >>" + runs + "\n" + body + "\n"
	if err := os.WriteFile(qemu, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return qemu, runs
}

var testKernel string

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
		if ok, why := Usable(qemu, testKernel); !ok {
			t.Fatalf("call %d: KVM not usable: %s", i, why)
		}
	}
	if n := countRuns(t, runs); n != 1 {
		t.Fatalf("probe ran %d times, want once per boot", n)
	}
	// A verdict from another boot is not trusted.
	v := newKVMVerdict(qemu, testKernel)
	if err := os.WriteFile(v.path, []byte("another-boot "+qemu+" "+testKernel+" "+fileIdentity(testKernel)+"\nbroken\nold\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Usable(qemu, testKernel); !ok || countRuns(t, runs) != 2 {
		t.Fatalf("stale verdict used: ok=%v runs=%d", ok, countRuns(t, runs))
	}
	// A real boot that failed under KVM overrides a passed probe.
	RecordBroken(qemu, testKernel, "guest hung")
	if ok, why := Usable(qemu, testKernel); ok || why != "guest hung" || countRuns(t, runs) != 2 {
		t.Fatalf("after RecordKVMBroken: ok=%v why=%q runs=%d", ok, why, countRuns(t, runs))
	}
}

func TestKVMProbeHangingGuest(t *testing.T) {
	qemu, _ := fakeKVMHost(t, `exec sleep 60`)
	start := time.Now()
	ok, why := Usable(qemu, testKernel)
	if ok || !strings.Contains(why, "printed nothing") {
		t.Fatalf("hanging guest: ok=%v why=%q", ok, why)
	}
	if d := time.Since(start); d > kvmProbeTimeout+3*time.Second {
		t.Fatalf("probe took %s, its bound is %s", d, kvmProbeTimeout)
	}
	if _, _, found := newKVMVerdict(qemu, testKernel).read(); !found {
		t.Fatal("verdict not cached")
	}
}

func TestKVMProbeAbortingQEMU(t *testing.T) {
	qemu, _ := fakeKVMHost(t, `echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0" >&2; exit 1`)
	ok, why := Usable(qemu, testKernel)
	if ok || !strings.Contains(why, "failed to set MSR") {
		t.Fatalf("aborting qemu: ok=%v why=%q", ok, why)
	}
}

func TestKVMProbeNoDevice(t *testing.T) {
	qemu, runs := fakeKVMHost(t, `echo "Linux version"`)
	Device = filepath.Join(t.TempDir(), "none")
	if ok, why := Usable(qemu, testKernel); ok || !strings.Contains(why, "no such file") {
		t.Fatalf("missing device: ok=%v why=%q", ok, why)
	}
	if countRuns(t, runs) != 0 {
		t.Fatal("probed without a KVM device")
	}
}

func TestKVMProbePerBinaryAndKernel(t *testing.T) {
	qemu, runs := fakeKVMHost(t, `echo "Linux version 6.1"`)
	RecordBroken("/other/qemu", testKernel, "other binary")
	RecordBroken(qemu, "/other/vmlinux", "other kernel")
	if ok, why := Usable(qemu, testKernel); !ok || countRuns(t, runs) != 1 {
		t.Fatalf("another binary's or kernel's verdict used: ok=%v why=%q", ok, why)
	}
}

// A kernel that is not there is no verdict on KVM: nothing is probed or
// cached (install.sh asks before the image exists); a kernel rebuilt at the
// same path is probed again.
func TestKVMProbeKernelFile(t *testing.T) {
	qemu, runs := fakeKVMHost(t, `echo "Linux version 6.1"`)
	missing := filepath.Join(filepath.Dir(testKernel), "later", "vmlinux")
	if ok, why := Usable(qemu, missing); ok || !strings.Contains(why, "no such file") || countRuns(t, runs) != 0 {
		t.Fatalf("missing kernel: ok=%v why=%q runs=%d", ok, why, countRuns(t, runs))
	}
	if _, _, found := newKVMVerdict(qemu, missing).read(); found {
		t.Fatal("a verdict was cached for a missing kernel")
	}
	if ok, _ := Usable(qemu, testKernel); !ok || countRuns(t, runs) != 1 {
		t.Fatalf("first probe: ok=%v runs=%d", ok, countRuns(t, runs))
	}
	tmp := testKernel + ".new"
	if err := os.WriteFile(tmp, []byte("another kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, testKernel); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Usable(qemu, testKernel); !ok || countRuns(t, runs) != 2 {
		t.Fatalf("rebuilt kernel not probed again: ok=%v runs=%d", ok, countRuns(t, runs))
	}
}
