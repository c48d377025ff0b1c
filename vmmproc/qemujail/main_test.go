package qemujail

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/vmm"
)

// As the jailed program, the test binary reads its parent-death signal,
// the exec'ing (main) thread's: a thread the runtime starts later has none.
func init() {
	if os.Getenv("MSB_JAIL_TEST_CHILD") == "1" {
		runtime.LockOSThread()
	}
}

// The test binary doubles as the jail helper and the program jailed, each
// started by the tests as a child.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "jail" { // the jail helper
		os.Exit(jail.Main(os.Args[2]))
	}
	if os.Getenv("MSB_JAIL_TEST_CHILD") == "1" { // the program jailed
		os.Exit(jailTestChild())
	}
	os.Exit(m.Run())
}

// testConfig is a VM's launch config with what a jail plan reads: its
// state dir and sockets.
func testConfig(t *testing.T) *vmm.LaunchConfig {
	dir := t.TempDir()
	return &vmm.LaunchConfig{Version: vmm.ConfigVersion, Name: "c1", Backend: vmm.BackendQEMU, RuntimeDir: dir,
		AgentSocket: filepath.Join(dir, "a.sock"), Kernel: "/k"}
}
