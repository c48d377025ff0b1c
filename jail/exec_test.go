package jail

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The test binary doubles as the jail helper (`jail <fd>`, as msb-runtime
// is started by Command) and as a program under qemu's filter
// (seccomp_test.go).
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "jail" {
		os.Exit(Main(os.Args[2]))
	}
	if mode := os.Getenv(seccompChildEnv); mode != "" {
		os.Exit(seccompTestChild(mode))
	}
	os.Exit(m.Run())
}

// TestJailRefusesHostNamespace: run by hand, outside namespaces of its
// own, the helper must not touch the host's mounts.
func TestJailRefusesHostNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	plan := &Plan{Root: filepath.Join(t.TempDir(), "jail"), Path: "/bin/true", Args: []string{"true"}}
	cmd, planf, err := Command(plan, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer planf.Close()
	cmd.SysProcAttr = nil
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refusing") {
		t.Fatalf("helper in the host's namespaces: %v: %s", err, out)
	}
	if ents, _ := os.ReadDir(plan.Root); len(ents) != 0 {
		t.Fatalf("it built a jail in the host's namespace: %v", ents)
	}
}
