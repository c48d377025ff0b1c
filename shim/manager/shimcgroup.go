package manager

import (
	"fmt"
	"path/filepath"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
)

// joinShimCgroup moves the new shim process pid into the cgroup that the
// task's runc options name (ShimCgroup; containerd's client sets it with
// WithShimCgroup), as containerd's runc shim does when it starts
// (cmd/containerd-shim-runc-v2/manager). The cgroup must exist.
//
// Only the shim moves. Each VMM process still moves on into its VM's own
// host cgroup (the spec's linux.cgroupsPath, ADR 014), so a VM's memory
// and CPU limits and its accounting stay its own and never land in a
// cgroup the shims share; a VM whose spec names no cgroupsPath stays in
// the shim's cgroup, as it stays in the shim's cgroup without ShimCgroup.
func joinShimCgroup(opts *bootapi.BootstrapParams, pid int) error {
	var ro runcoptions.Options
	found, err := opts.FindExtension(&ro)
	if err != nil {
		return fmt.Errorf("runtime options: %w", err)
	}
	p := ro.GetShimCgroup()
	if !found || p == "" {
		return nil
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("runtime option ShimCgroup %q: use a clean absolute cgroup path such as /containerd/shim: %w", p, errdefs.ErrInvalidArgument)
	}
	switch cgroups.Mode() {
	case cgroups.Unavailable:
		return fmt.Errorf("runtime option ShimCgroup %q: this host has no cgroup hierarchy mounted: %w", p, errdefs.ErrNotImplemented)
	case cgroups.Unified:
		cg, err := cgroup2.Load(p)
		if err != nil {
			return fmt.Errorf("runtime option ShimCgroup %q: %w", p, err)
		}
		if err := cg.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("runtime option ShimCgroup %q: move the shim into it (create the cgroup first): %w", p, err)
		}
	default:
		cg, err := cgroup1.Load(cgroup1.StaticPath(p))
		if err != nil {
			return fmt.Errorf("runtime option ShimCgroup %q: load it (create it in every hierarchy first): %w", p, err)
		}
		if err := cg.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("runtime option ShimCgroup %q: move the shim into it: %w", p, err)
		}
	}
	return nil
}
