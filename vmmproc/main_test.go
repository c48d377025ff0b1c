package vmmproc

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/vmm"
)

// As the real VMM, the test binary's main thread moves into the view
// (package view): keep the main goroutine on it, as msb-runtime does. As the
// jailed program, it reads its parent-death signal, the exec'ing (main)
// thread's: a thread the runtime starts later has none.
func init() {
	if os.Getenv("MSB_FAKE_VMM") == "real" || os.Getenv("MSB_JAIL_TEST_CHILD") == "1" {
		runtime.LockOSThread()
	}
}

// The test binary doubles as the real VMM process, its jail helper and
// the program jailed, each started by the tests as a child.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "jail" { // the VMM's jail helper (jail_test.go)
		os.Exit(jail.Main(os.Args[2]))
	}
	if os.Getenv("MSB_JAIL_TEST_CHILD") == "1" { // the program jailed (jail_test.go)
		os.Exit(jailTestChild())
	}
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
