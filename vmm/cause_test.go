package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGuestStopCause(t *testing.T) {
	for _, c := range []struct{ console, want string }{
		{"[    1.0] msb-agent: ready\n[   40.1] Out of memory: Killed process 87 (init) total-vm:1234kB\n[   40.2] reboot: Power down\n", "the guest's OOM killer killed the agent"},
		{"[    1.0] sysrq: Trigger a crash\n[    1.0] Kernel panic - not syncing: sysrq triggered crash\n", "guest kernel panic: Kernel panic - not syncing: sysrq triggered crash"},
		{"[    1.0] Out of memory: Killed process 90 (dd) total-vm:1kB\n[    2.0] reboot: Power down\n", "the guest powered itself off"},
		{"[    1.0] nothing to see\n", "its console does not say why"},
		{"", "its console does not say why"},
	} {
		p := filepath.Join(t.TempDir(), "console.log")
		if err := os.WriteFile(p, []byte(strings.Repeat("x\n", 40000)+c.console), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := GuestStopCause(p); !strings.Contains(got, c.want) {
			t.Errorf("console %q: cause %q, want %q", c.console, got, c.want)
		}
	}
}

func TestEndCause(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmm.log")
	log := `time="x" level=info msg="agent ready 2s after start"` + "\n" +
		`time="y" level=warning msg="VM ended: guest kernel panic: Kernel panic - not syncing: \"x\": exiting 255"` + "\n"
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, ok := EndCause(p); !ok || got != `guest kernel panic: Kernel panic - not syncing: "x"` {
		t.Fatalf("EndCause = %q, %v", got, ok)
	}
	if _, ok := EndCause(filepath.Join(t.TempDir(), "none")); ok {
		t.Fatal("a missing log has a cause")
	}
}
