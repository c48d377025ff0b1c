package task

import (
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// What a guest keeps for itself when a container's memory has no limit.
// A container that filled the VM's memory (a tmpfs, which killing the
// writer does not empty) would leave the kernel deadlocked on memory and
// the VM dead; capped, its own cgroup's OOM killer takes it instead.
const (
	// guestReserveBytes is the guest's own need: kernel, page cache of the
	// guest image, the agent and runc (docs/configuration.md).
	guestReserveBytes = 96 << 20
	// minCapBytes: below this the VM is too small to cap usefully.
	minCapBytes = 32 << 20
)

// guestDefaults fills in what the spec leaves to the runtime and a VM
// must decide, and reports whether it changed the spec:
//   - process.oomScoreAdj 0 when unset: runc leaves the score alone, and
//     the container would inherit the agent's -1000 (never the OOM
//     killer's choice, leaving the agent to be);
//   - a memory limit of the guest's memory less guestReserveBytes when
//     the spec has none.
func guestDefaults(spec *specs.Spec) bool {
	changed := false
	if spec.Process.OOMScoreAdj == nil {
		zero := 0
		spec.Process.OOMScoreAdj = &zero
		changed = true
	}
	if spec.Linux == nil {
		return changed
	}
	r := spec.Linux.Resources
	if r != nil && r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		return changed
	}
	total := memTotal()
	if total-guestReserveBytes < minCapBytes {
		return changed
	}
	limit := total - guestReserveBytes
	if r == nil {
		r = &specs.LinuxResources{}
		spec.Linux.Resources = r
	}
	if r.Memory == nil {
		r.Memory = &specs.LinuxMemory{}
	}
	r.Memory.Limit = &limit
	log.L.Debugf("no memory limit: capping at %d MiB of the guest's %d MiB", limit>>20, total>>20)
	return true
}

// memTotal is the guest's total memory in bytes; 0 if unknown.
func memTotal() int64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}
