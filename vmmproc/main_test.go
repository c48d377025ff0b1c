package vmmproc

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/msb-dev/msb/vmm"
)

// As the real VMM, the test binary's main thread moves into the view
// (package view): keep the main goroutine on it, as msb-runtime does.
func init() {
	if os.Getenv("MSB_FAKE_VMM") == "real" {
		runtime.LockOSThread()
	}
}

// The test binary doubles as the real VMM process, started by the tests as
// a child.
func TestMain(m *testing.M) {
	if os.Getenv("MSB_FAKE_VMM") == "real" { // the real VMM process (libkrun_test.go)
		os.Exit(realVMM())
	}
	os.Exit(m.Run())
}

func testConfig(t *testing.T) *vmm.LaunchConfig {
	dir := t.TempDir()
	return &vmm.LaunchConfig{
		Version: vmm.ConfigVersion, Name: "c1", Backend: vmm.BackendQEMU, RuntimeDir: dir,
		AgentSocket: filepath.Join(dir, "a.sock"), VCPUs: 1, MemoryMiB: 128, Kernel: "/k",
		Env: []string{"MSB_HOSTNAME=h"},
	}
}
