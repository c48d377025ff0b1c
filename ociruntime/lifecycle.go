package ociruntime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/msb-dev/msb/hooks"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/vmm"
)

// State is `msb-runtime state`.
func State(ctx context.Context, o Options, id string) (any, error) {
	c, err := load(o, id)
	if err != nil {
		return nil, err
	}
	return c.state(ctx), nil
}

// Kill is `msb-runtime kill`: it signals the container's init (all of
// its processes with all) in the guest. SIGKILL also works on a guest that
// does not answer: then the VM goes.
func Kill(ctx context.Context, o Options, id string, sig syscall.Signal, all bool) error {
	c, a, err := loadAndDial(ctx, o, id)
	if err != nil {
		return err
	}
	defer a.Close()
	kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = a.task.Kill(kctx, &task.KillRequest{ID: id, Signal: uint32(sig), All: all})
	if err == nil {
		return nil
	}
	err = errgrpc.ToNative(err)
	if errdefs.IsNotFound(err) || !c.vmmAlive() {
		return fmt.Errorf("container %q: %w", id, errStopped)
	}
	if sig == syscall.SIGKILL {
		log.G(ctx).WithError(err).Warn("the guest did not take SIGKILL: stopping the VM")
		return c.stopVM(ctx)
	}
	return fmt.Errorf("kill %q in the guest: %w", id, err)
}

// stopVM makes the VMM power the guest off (SIGTERM; it exits 137) and
// kills it if it has not gone after a step (launch.VMRecord.Stop).
func (c *container) stopVM(ctx context.Context) error {
	if err := c.rec.Stop(nil); err != nil {
		return fmt.Errorf("container %q: %w", c.rec.ID, err)
	}
	return nil
}

// waitVMM waits up to d until the container's pid process has exited (a
// zombie counts: its parent, the caller's monitor, reaps it).
func (c *container) waitVMM(d time.Duration) bool {
	p, err := vmm.OpenProc(c.rec.Pid, c.rec.PidStart)
	if p == nil || err != nil {
		return true
	}
	defer p.Close()
	return p.Wait(d)
}

// Delete is `msb-runtime delete`: a created or stopped container goes, a
// pod member by deleteMember; one whose VM members still run in is
// refused (ADR 024). Otherwise a
// running or paused one only with force (its VM is stopped first). The
// poststop hooks run last.
func Delete(ctx context.Context, o Options, id string, force bool) error {
	c, err := load(o, id)
	if err != nil {
		if force && strings.Contains(err.Error(), "does not exist") {
			return nil
		}
		return err
	}
	if c.rec.Owner != "" {
		if err := c.deleteMember(ctx, o, force); err != nil {
			return err
		}
		return c.poststop(ctx)
	}
	// Members run in a running VM only: once its VMM is gone they are
	// ending (137) and no longer hold it.
	if c.vmmAlive() {
		if m := liveMembers(o, id); len(m) > 0 {
			return errLiveMembers(id, m)
		}
	}
	if c.vmmAlive() {
		switch st := c.status(ctx); {
		case st == statusStopped:
			// The VM is on its way down after the container's exit.
			if !c.waitVMM(10 * time.Second) {
				err = c.stopVM(ctx)
			}
		case st == statusCreated || force:
			err = c.stopVM(ctx)
		default:
			return fmt.Errorf("cannot delete container %s that is not stopped: %s (use --force)", id, st)
		}
		if err != nil {
			return err
		}
	}
	if err := c.remove(ctx); err != nil {
		return err
	}
	return c.poststop(ctx)
}

// poststop runs the poststop hooks of a deleted container; as with runc,
// a failure is logged.
func (c *container) poststop(ctx context.Context) error {
	st := hooks.State(&c.rec.Spec, c.rec.ID, c.rec.Bundle, specs.StateStopped, 0)
	if err := hooks.Run(ctx, &c.rec.Spec, hooks.Poststop, st); err != nil {
		log.G(ctx).WithError(err).Warn("poststop")
	}
	return nil
}

// Pause and Resume freeze and thaw the container's processes in the guest.
func Pause(ctx context.Context, o Options, id string) error {
	return withTask(ctx, o, id, func(tc taskapi) error {
		_, err := tc.Pause(ctx, &task.PauseRequest{ID: id})
		return err
	})
}

// Resume is `msb-runtime resume`.
func Resume(ctx context.Context, o Options, id string) error {
	return withTask(ctx, o, id, func(tc taskapi) error {
		_, err := tc.Resume(ctx, &task.ResumeRequest{ID: id})
		return err
	})
}

// Update sets the container's resources in the guest. Its VM's memory
// follows the limit within its headroom (launch.Resize, ADR 031); what the
// VM cannot give is refused before the guest sees it.
func Update(ctx context.Context, o Options, id string, r *specs.LinuxResources) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	c, err := load(o, id)
	if err != nil {
		return err
	}
	guest := func() error {
		return withTask(ctx, o, id, func(tc taskapi) error {
			_, err := tc.Update(ctx, &task.UpdateTaskRequest{ID: id,
				Resources: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: b}})
			return err
		})
	}
	if _, err := launch.Resize(ctx, c.rec.AgentSocket, c.rec.VM, max(c.rec.MemoryLimit, 0), r, guest); err != nil {
		return fmt.Errorf("container %q: %w", id, err)
	}
	if m := r.Memory; m != nil && m.Limit != nil {
		c.rec.MemoryLimit = *m.Limit
		if *m.Limit <= 0 {
			c.rec.MemoryLimit = -1
		}
		return c.save()
	}
	return nil
}

// loadAndDial finds container id and connects to its guest agent.
func loadAndDial(ctx context.Context, o Options, id string) (*container, *agentConn, error) {
	c, err := load(o, id)
	if err != nil {
		return nil, nil, err
	}
	a, err := c.dial(ctx)
	return c, a, err
}

func withTask(ctx context.Context, o Options, id string, fn func(taskapi) error) error {
	_, a, err := loadAndDial(ctx, o, id)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := fn(a.task); err != nil {
		err = errgrpc.ToNative(err)
		if errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("container %q: %w", id, errStopped)
		}
		return err
	}
	return nil
}
