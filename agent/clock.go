package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/agent/task"
	"github.com/msb-dev/msb/protocol"
)

// clockSlack is how far the guest's clock may be from the host's before
// SetClock steps it: the request took a moment to arrive, and stepping
// back by that moment would only make time run backwards.
const clockSlack = 20 * time.Millisecond

var _ protocol.Clocker = (*agentService)(nil)

func (s *agentService) SetClock(ctx context.Context, unixNano int64) error {
	return task.ToStatus(s.a.SetClock(unixNano))
}

// SetClock steps the guest's wall clock to the host's (Unix nanoseconds)
// when it is off by more than clockSlack: a guest starts from the RTC's
// whole seconds, and a pool VM may have been parked for long (ADR 020).
// Outside a guest (Options.Guest unset) it changes nothing.
func (a *Agent) SetClock(unixNano int64) error {
	if unixNano <= 0 {
		return fmt.Errorf("set clock: %d is not a time in Unix nanoseconds: %w", unixNano, errdefs.ErrInvalidArgument)
	}
	off := time.Until(time.Unix(0, unixNano))
	if !a.opts.Guest || (off > -clockSlack && off < clockSlack) {
		return nil
	}
	ts := unix.NsecToTimespec(unixNano)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set clock: %w", err)
	}
	log.L.Debugf("guest clock stepped by %s to the host's", off.Round(time.Millisecond))
	return nil
}
