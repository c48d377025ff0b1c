package e2e

import (
	"strconv"
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
	e.fillAndFree(t, id, childNamed(t, e.vmmPid(t, id), "qemu-system"), 200, 150)
}

// fillAndFree writes a file of mib MiB to the tmpfs at /fill of container
// id and removes it: qemu's RSS must rise by at least want MiB, and fall
// by as much within 30 s (free page reporting).
func (e *shimEnv) fillAndFree(t *testing.T, id string, qemu, mib, want int) {
	t.Helper()
	idle := rssKiB(t, qemu)
	e.MustCtr("task", "exec", "--exec-id", "fill", id, "dd", "if=/dev/zero", "of=/fill/f", "bs=1M", "count="+strconv.Itoa(mib))
	full := rssKiB(t, qemu)
	if full-idle < want<<10 {
		t.Fatalf("qemu RSS %d KiB idle, %d KiB with %d MiB written in the guest: want it %d MiB higher", idle, full, mib, want)
	}
	e.MustCtr("task", "exec", "--exec-id", "free", id, "rm", "/fill/f")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		now := rssKiB(t, qemu)
		if full-now >= want<<10 {
			t.Logf("qemu RSS: idle %d KiB, %d MiB written %d KiB, freed %d KiB", idle, mib, full, now)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu RSS %d KiB 30 s after the guest freed %d MiB (%d KiB when full, %d idle): want it %d MiB lower", now, mib, full, idle, want)
		}
	}
}
