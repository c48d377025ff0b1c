package e2e

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

// adjtimexTime parses busybox adjtimex's time.tv_sec and time.tv_usec.
func adjtimexTime(t *testing.T, out string) time.Time {
	t.Helper()
	sec := regexp.MustCompile(`time\.tv_sec:\s+(\d+)`).FindStringSubmatch(out)
	usec := regexp.MustCompile(`time\.tv_usec:\s+(\d+)`).FindStringSubmatch(out)
	if sec == nil || usec == nil {
		t.Fatalf("no time in adjtimex's output %q", out)
	}
	s, _ := strconv.ParseInt(sec[1], 10, 64)
	u, _ := strconv.ParseInt(usec[1], 10, 64)
	return time.Unix(s, u*1000)
}

// checkGuestClock fails unless guest, read between before and after on
// the host, is within the agent's slack of the host's clock.
func checkGuestClock(t *testing.T, what string, guest, before, after time.Time) {
	t.Helper()
	const slack = 100 * time.Millisecond
	if guest.Before(before.Add(-slack)) || guest.After(after.Add(slack)) {
		t.Errorf("%s: guest clock %s, host between %s and %s: off by more than %s",
			what, guest.Format("15:04:05.000"), before.Format("15:04:05.000"), after.Format("15:04:05.000"), slack)
	}
}

// TestShimGuestClock: a VM's clock is the host's to well under a second
// (the guest starts from the RTC's whole seconds; MSB_CLOCK steps it).
func TestShimGuestClock(t *testing.T) {
	e := startShimEnv(t)
	e.startDetached(t, "clock", "sleep", "1000")
	e.waitStatus(t, "clock", "RUNNING", time.Minute)
	for i := 0; i < 2; i++ {
		before := time.Now()
		out := e.MustCtr("task", "exec", "--exec-id", "c"+strconv.Itoa(i), "clock", "adjtimex")
		checkGuestClock(t, "exec adjtimex", adjtimexTime(t, out), before, time.Now())
	}
	e.remove(t, "clock")
}
