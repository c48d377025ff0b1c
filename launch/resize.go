package launch

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/specconv"
	"github.com/msb-dev/msb/vmm"
)

// memoryCeiling is what a VM of sizeMiB boots with under backend (ADR 031):
// its headroom (config.MemoryCeiling) for every qemu VM, which any of its
// creators' updates can reach (CRI's UpdateContainerResources, docker and
// nerdctl update); libkrun has no balloon the VMM can set.
func memoryCeiling(backend string, sizeMiB int, c config.Config) int {
	if backend == vmm.BackendLibkrun {
		return 0
	}
	if n := c.MemoryCeiling(sizeMiB); n > sizeMiB {
		return n
	}
	return 0
}

// Resize applies an update r of the resources of a container of the VM
// behind socket (size: the VM's vCPUs and overhead) whose memory limit was
// oldLimit (bytes, 0: none), then calls guest to set them in the guest.
// The VM's memory follows the container's limit (specconv.MemoryFor): up,
// the VMM grows the VM before the guest's cgroup is raised; down, the
// guest's cgroup is lowered first and the VMM then takes the memory back.
// What the VM cannot give (vCPUs, memory past its headroom) is refused as
// errdefs.ErrFailedPrecondition before the guest sees it. It returns the
// VM's memory after the update.
func Resize(ctx context.Context, socket string, size specconv.VMSize, oldLimit int64, r *specs.LinuxResources, guest func() error) (int, error) {
	if r == nil {
		return 0, guest()
	}
	st, err := vmm.SetMemory(ctx, socket, 0)
	if err != nil {
		// A VMM that cannot say: the VM keeps its size.
		log.G(ctx).WithError(err).Warn("the VM's memory is unknown: it keeps its size")
		size.MaxMemoryMiB = 0
	} else {
		size.MemoryMiB, size.MaxMemoryMiB = st.TargetMiB, st.MaxMiB
	}
	if err := size.CheckCPU(r); err != nil {
		return 0, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	want, err := size.MemoryFor(r, oldLimit)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	cur := size.MemoryMiB
	switch {
	case want > cur:
		if _, err := vmm.SetMemory(ctx, socket, want); err != nil {
			return cur, fmt.Errorf("grow the VM from %d to %d MiB: %w", cur, want, err)
		}
		if err := guest(); err != nil {
			if _, uerr := vmm.SetMemory(context.WithoutCancel(ctx), socket, cur); uerr != nil {
				log.G(ctx).WithError(uerr).Warnf("the VM stays at %d MiB", want)
				return want, err
			}
			return cur, err
		}
	case want < cur:
		if err := guest(); err != nil {
			return cur, err
		}
		if _, err := vmm.SetMemory(ctx, socket, want); err != nil {
			return cur, fmt.Errorf("the container's limit is lowered, but its VM keeps %d MiB (not %d): %w", cur, want, err)
		}
	default:
		return cur, guest()
	}
	return want, nil
}
