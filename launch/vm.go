package launch

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/vmm"
)

// What every creator of a VM (the shim, msb-runtime's CLI, the pool)
// does the same way: wait for its agent after Spawn, record it, and stop
// and remove it from that record once its creator is gone.

// bootMargin is what a creator waits for a booting VM's agent beyond the
// VMM's own boot timeout: the VMM's start and the relay's first accept.
const bootMargin = 10 * time.Second

// WaitAgent connects to the agent of the VM that h runs with cfg and
// waits until it answers. It gives up when the VMM dies or the boot
// timeout and a margin have passed, with an error that says which and
// names the VMM's log and the guest console.
func WaitAgent(ctx context.Context, cfg *vmm.LaunchConfig, h *vmm.Handle) (*ttrpc.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.BootTimeout)+bootMargin)
	defer cancel()
	go func() {
		select {
		case <-h.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := vmm.DialTTRPC(ctx, cfg.AgentSocket)
	if err == nil {
		if err = vmm.WaitReady(ctx, c); err == nil {
			return c, nil
		}
		c.Close()
	}
	vmmLog := filepath.Join(cfg.RuntimeDir, "vmm.log")
	select {
	case <-h.Done():
		return nil, fmt.Errorf("VM exited during boot (VMM log %s, guest console %s): %w", vmmLog, cfg.ConsoleLog, err)
	default:
		return nil, fmt.Errorf("guest agent did not come up (VMM log %s, guest console %s): %w", vmmLog, cfg.ConsoleLog, err)
	}
}

// VMRecord is what a VM's cleanup needs once its creator is gone: kept in
// the shim's bundle record, msb-runtime's container record and the pool's
// entries.
type VMRecord struct {
	// Pid is the VMM process (a CLI pod member's: its relay, ADR 024),
	// PidStart its start time (vmm.ProcStart): together they name the
	// process, never a later one with its pid.
	Pid      int    `json:"pid,omitempty"`
	PidStart uint64 `json:"pidStart,omitempty"`
	// StateDir is the VM's state dir, AgentSocket its relay socket.
	StateDir    string `json:"stateDir,omitempty"`
	AgentSocket string `json:"agentSocket,omitempty"`
	// Cgroup is the VM's host cgroup (vmm.HostResources.Cgroup), which
	// its VMM removes unless it is killed.
	Cgroup string `json:"cgroup,omitempty"`
}

// RecordVM is the record of the VM h runs with cfg.
func RecordVM(cfg *vmm.LaunchConfig, h *vmm.Handle) (VMRecord, error) {
	start, ok := vmm.ProcStart(h.Pid)
	if !ok {
		return VMRecord{}, fmt.Errorf("VMM process %d exited: see %s", h.Pid, filepath.Join(cfg.RuntimeDir, "vmm.log"))
	}
	r := VMRecord{Pid: h.Pid, PidStart: start, StateDir: cfg.RuntimeDir, AgentSocket: cfg.AgentSocket}
	if cfg.Host != nil {
		r.Cgroup = cfg.Host.Cgroup
	}
	return r, nil
}

// Alive reports whether the recorded process still runs.
func (r VMRecord) Alive() bool { return vmm.Alive(r.Pid, r.PidStart) }

// Stop ends the recorded VMM process if it still runs (vmm.Proc.Stop:
// shutdown, which may be nil, then SIGTERM, then SIGKILL).
func (r VMRecord) Stop(shutdown func() error) error {
	p, err := vmm.OpenProc(r.Pid, r.PidStart)
	if p == nil {
		return err
	}
	defer p.Close()
	return p.Stop(shutdown)
}

// Remove removes what a VM whose VMM has exited leaves when it was
// killed: its host cgroup, its state dir (members' binds below it first,
// found by mount ID, never through a symlink the guest planted) and its
// sockets.
func (r VMRecord) Remove() error {
	var errs []error
	if err := vmm.RemoveHostCgroup(&vmm.HostResources{Cgroup: r.Cgroup}); err != nil {
		errs = append(errs, err)
	}
	if r.StateDir != "" {
		if err := mounts.RemoveAllUnmounted(r.StateDir); err != nil {
			errs = append(errs, fmt.Errorf("state dir: %w", err))
		}
	}
	if r.AgentSocket != "" {
		vmm.RemoveSockets(r.AgentSocket)
	}
	return errors.Join(errs...)
}
