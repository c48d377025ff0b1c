package vmm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestGuestStopCause(t *testing.T) {
	for _, c := range []struct{ console, want string }{
		{"[    8.1] Out of memory: Killed process 102 (exe) total-vm:1271768kB oom_score_adj:0\r\nmsb-agent: time=\"02:41:00.087\" level=error msg=\"agent exited (signal killed): powering off\"\r\n[    8.3] reboot: Power down\r\n", "the guest's OOM killer killed the agent"},
		{"msb-agent: time=\"x\" level=error msg=\"agent exited (exit status 2): powering off\"\n[    8.3] reboot: Power down\n", "the guest agent died: agent exited (exit status 2)"},
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

// TestHypervisorKilledCause: a seccomp kill (SIGSYS) says where the
// syscall is named; any other signal is named as it is.
func TestHypervisorKilledCause(t *testing.T) {
	for sig, want := range map[string]string{
		"SYS":  "killed by its seccomp filter (signal: bad system call), a syscall off the list; the kernel log names it",
		"KILL": "the hypervisor was killed (signal: killed)",
	} {
		err := exec.Command("sh", "-c", "kill -"+sig+" $$").Run()
		if got := hypervisorKilledCause(err); !strings.Contains(got, want) {
			t.Errorf("SIG%s: %q, want %q", sig, got, want)
		}
	}
}
