package e2e

import (
	"testing"
	"time"
)

// TestFreePageReporting: memory a container frees in the guest returns to
// the host within seconds (issue 24): 200 MiB written to a tmpfs in the
// guest raise qemu's RSS, and removing the file lowers it again, through
// the balloon's free page reporting (the guest reports free 2 MiB blocks,
// qemu drops them).
func TestFreePageReporting(t *testing.T) {
	e := startShimEnv(t)
	const id = "fpr"
	e.startWithFill(t, id, "402653184", "300m")
	qemu := childNamed(t, e.vmmPid(t, id), "qemu-system")
	idle := rssKiB(t, qemu)
	e.MustCtr("task", "exec", "--exec-id", "fill", id, "dd", "if=/dev/zero", "of=/fill/f", "bs=1M", "count=200")
	full := rssKiB(t, qemu)
	if full-idle < 150<<10 {
		t.Fatalf("qemu RSS %d KiB idle, %d KiB with 200 MiB written in the guest: want it 150 MiB higher", idle, full)
	}
	e.MustCtr("task", "exec", "--exec-id", "free", id, "rm", "/fill/f")
	deadline := time.Now().Add(30 * time.Second)
	for {
		now := rssKiB(t, qemu)
		if full-now >= 150<<10 {
			t.Logf("qemu RSS: idle %d KiB, 200 MiB written %d KiB, freed %d KiB", idle, full, now)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu RSS %d KiB 30 s after the guest freed 200 MiB (%d KiB when full, %d idle): want it 150 MiB lower", now, full, idle)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
