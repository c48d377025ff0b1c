package vmm

import (
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
)

// HostResources is where a VM's VMM process tree (the VMM process and
// its hypervisor) stands on the host: the container's cgroup, with limits
// from the VM's size, and the container's OOM score (ADR 014). The VMM
// process enters it (package vmmproc); its creators remove a cgroup the
// VMM left behind (RemoveHostCgroup).
type HostResources struct {
	// Cgroup is the cgroup, a clean absolute path below the root of every
	// hierarchy (cgroupfs form), that the VMM process moves into before it
	// starts the hypervisor; it creates it and removes it when the VM is
	// gone. Empty: the tree stays in its creator's cgroup.
	Cgroup string `json:"cgroup,omitempty"`
	// OverheadMiB is what the cgroup's memory limit adds to the VM's
	// memory; 0: vmmproc.HostOverheadMiB.
	OverheadMiB int `json:"overheadMiB,omitempty"`
	// CPUShares is the spec's relative CPU weight (cgroup v1 shares,
	// converted to cpu.weight on v2); 0 leaves the default.
	CPUShares uint64 `json:"cpuShares,omitempty"`
	// OOMScoreAdj is the oom_score_adj of the VMM process and hypervisor.
	OOMScoreAdj int `json:"oomScoreAdj"`
}

// Validate checks h as a launch config's or a claim's (nil is valid).
func (h *HostResources) Validate() error {
	if h == nil {
		return nil
	}
	if h.Cgroup != "" && (!path.IsAbs(h.Cgroup) || path.Clean(h.Cgroup) != h.Cgroup || h.Cgroup == "/") {
		return fmt.Errorf("launch config: host.cgroup %q must be a clean absolute path below the root", h.Cgroup)
	}
	if h.OOMScoreAdj < -1000 || h.OOMScoreAdj > 1000 {
		return fmt.Errorf("launch config: host.oomScoreAdj %d out of range -1000..1000", h.OOMScoreAdj)
	}
	if h.OverheadMiB < 0 {
		return fmt.Errorf("launch config: host.overheadMiB %d is negative", h.OverheadMiB)
	}
	return nil
}

// v2Root is the cgroup v2 mount point.
const v2Root = "/sys/fs/cgroup"

// RemoveHostCgroup removes the host cgroup of a VM whose VMM process has
// exited, in case the VMM could not (SIGKILL): its creators call it when
// they release the VM. The hypervisor dies with the VMM (PDEATHSIG), so a
// cgroup that still holds a process is retried for a few seconds. A
// cgroup already gone is no error.
func RemoveHostCgroup(h *HostResources) error {
	if h == nil || h.Cgroup == "" || cgroups.Mode() == cgroups.Unavailable {
		return nil
	}
	if err := h.Validate(); err != nil {
		return err
	}
	del := func() error {
		if cgroups.Mode() == cgroups.Unified {
			if _, err := os.Stat(v2Root + h.Cgroup); errors.Is(err, os.ErrNotExist) {
				return nil
			}
			m, err := cgroup2.Load(h.Cgroup, cgroup2.WithMountpoint(v2Root))
			if err != nil {
				return err
			}
			return m.Delete()
		}
		cg, err := cgroup1.Load(cgroup1.StaticPath(h.Cgroup), func(c *cgroup1.InitConfig) error {
			c.InitCheck = cgroup1.AllowAny // skip controllers the host lacks
			return nil
		})
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil
		}
		if err != nil {
			return err
		}
		return cg.Delete()
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := del()
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("host cgroup %s: %w", h.Cgroup, err)
			}
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}
