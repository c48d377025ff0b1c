package vmmproc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/msb-dev/msb/vmm"
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

// The cause is what the VMM recorded in the state dir, not a line of a
// log the hypervisor (and through it the guest) writes to.
func TestEndCause(t *testing.T) {
	dir := t.TempDir()
	forged := `time="y" level=warning msg="VM ended: the hypervisor was killed: exiting 137"` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "vmm.log"), []byte(forged), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, ok := vmm.EndCause(dir); ok {
		t.Fatalf("vmm.EndCause = %q from vmm.log, want none", got)
	}
	recordEndCause(dir, GuestStopCause(filepath.Join(dir, "none"))+": "+quoteGuest("x\x1b[2J"+strings.Repeat("y", 500)), vmm.ExitGuestLost)
	got, ok := vmm.EndCause(dir)
	if !ok || !strings.HasPrefix(got, "the guest stopped and its console does not say why: x [2Jyyy") || len(got) > 300 {
		t.Fatalf("vmm.EndCause = %q, %v", got, ok)
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
