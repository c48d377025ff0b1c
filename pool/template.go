package pool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/template"
	"github.com/msb-dev/msb/vmm"
)

// Templates (ADR 025): with template = true a bucket keeps one saved VM of
// its layout, held by a holder process in the bucket's directory
// (package template), and starts its pool VMs from it instead of booting
// them. A bucket is one config and one set of image files and binaries
// (Fingerprint), so a template is never used past a change of either.

// ensureTemplate saves the bucket's template unless its holder runs. The
// caller holds the bucket's lock.
func (b bucket) ensureTemplate(ctx context.Context, c config.Config) error {
	if template.Alive(b.dir) {
		return nil
	}
	failed := filepath.Join(b.dir, "template.failed")
	if st, err := os.Stat(failed); err == nil && time.Since(st.ModTime()) < templateRetry {
		b, _ := os.ReadFile(failed)
		return fmt.Errorf("pool template: the last save failed %s ago, retried after %s: %s", time.Since(st.ModTime()).Round(time.Second), templateRetry, b)
	}
	if _, err := b.start(ctx, c, true); err != nil {
		// Every Create runs a fill: do not boot a failing template each time.
		_ = os.WriteFile(failed, []byte(err.Error()), 0o600)
		return fmt.Errorf("pool template: %w", err)
	}
	_ = os.Remove(failed)
	return nil
}

// templateRetry is how long after a failed save Fill tries again.
const templateRetry = 10 * time.Minute

// templateLayout gives a template and the VMs started from it what must
// match between them beyond the config: the NICs' MACs, which the saved
// device state carries (the agent finds a NIC by the MAC it booted with).
func templateLayout(l *vmm.LaunchConfig) {
	for i := range l.NICs {
		l.NICs[i].MAC = fmt.Sprintf("02:6d:73:62:00:%02x", i)
	}
}

// StartFromTemplate starts one VM of config c from its template, now, and
// adopts it for claim (a cold start without a parked VM). It returns nil,
// nil, nil when the bucket has no template yet.
func (p Pool) StartFromTemplate(ctx context.Context, c config.Config, claim vmm.Claim) (*Entry, *vmm.Handle, error) {
	b := p.bucket(Fingerprint(c, p.Binary))
	if !c.Template || !template.Alive(b.dir) {
		return nil, nil, nil
	}
	start := time.Now()
	e, err := b.boot(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	h, err := vmm.Adopt(e.Pid, e.Launch.Lifeline, claim)
	if err != nil {
		p.discard(e, nil)
		return nil, nil, fmt.Errorf("VM from the template: %w", err)
	}
	p.logf("VM %s started from the template in %s", e.ID, time.Since(start).Round(time.Millisecond))
	return e, h, nil
}
