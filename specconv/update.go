package specconv

import (
	"fmt"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// VMSize is a running VM's size and the part of its memory the guest
// itself needs (overhead_mib when it was sized): what an update of a
// container's resources can ask for in it. Its vCPUs are fixed at boot;
// its memory can grow up to MaxMemoryMiB (ADR 031), so a limit past that
// would only be a number in the guest's cgroup.
type VMSize struct {
	VCPUs       int `json:"vcpus"`
	MemoryMiB   int `json:"memoryMiB"`
	OverheadMiB int `json:"overheadMiB"`
	// MaxMemoryMiB is the most a resize can grow the VM to (its
	// headroom); 0: MemoryMiB.
	MaxMemoryMiB int `json:"maxMemoryMiB,omitempty"`
}

// MemoryCeiling is MaxMemoryMiB, or MemoryMiB without headroom.
func (v VMSize) MemoryCeiling() int { return max(v.MaxMemoryMiB, v.MemoryMiB) }

// defaultCPUPeriod is the kernel's CFS period (µs), what a quota without a
// period is taken against.
const defaultCPUPeriod = 100000

// ContainerMiB is the memory a container can be given in the VM: its
// memory less the guest's overhead, or all of it when the VM was made
// smaller than the overhead (io.msb.memory-mib).
func (v VMSize) ContainerMiB() int {
	if n := v.MemoryMiB - v.OverheadMiB; n > 0 {
		return n
	}
	return v.MemoryMiB
}

// CheckUpdate refuses resources a container joining this VM asks for
// that the VM cannot give as it is: a memory limit over ContainerMiB, a CPU
// quota over its vCPUs, a cpuset naming a CPU it lacks. Lowering and
// anything within the VM pass; so does a zero VMSize (size unknown).
func (v VMSize) CheckUpdate(r *specs.LinuxResources) error {
	if r == nil || v.VCPUs == 0 {
		return nil
	}
	const fix = "msb cannot grow a running VM for a container that joins it; recreate the container (pod) with the larger limit, or ask for at most that"
	if m := r.Memory; m != nil && m.Limit != nil && *m.Limit > 0 && mibFor(uint64(*m.Limit)) > v.ContainerMiB() {
		return fmt.Errorf("linux.resources.memory.limit %d exceeds the %d MiB the VM can give a container (the VM has %d MiB, %d of them the guest's own, overhead_mib): %s",
			*m.Limit, v.ContainerMiB(), v.MemoryMiB, v.MemoryMiB-v.ContainerMiB(), fix)
	}
	return v.CheckCPU(r)
}

// CheckCPU refuses CPU resources the VM's vCPUs cannot give: a quota
// over them or a cpuset naming a CPU it lacks. A VM does not grow its
// vCPUs (ADR 031).
func (v VMSize) CheckCPU(r *specs.LinuxResources) error {
	if r == nil || v.VCPUs == 0 {
		return nil
	}
	const fix = "msb cannot grow a running VM's vCPUs (ADR 031); recreate the container (pod) with the larger limit, or ask for at most that"
	if c := r.CPU; c != nil {
		if c.Quota != nil && *c.Quota > 0 {
			p := uint64(defaultCPUPeriod)
			if c.Period != nil && *c.Period > 0 {
				p = *c.Period
			}
			if n := cpusFor(uint64(*c.Quota), p); n > v.VCPUs {
				return fmt.Errorf("linux.resources.cpu.quota %d per period %d asks for %d CPUs, more than the VM's %d vCPUs: %s", *c.Quota, p, n, v.VCPUs, fix)
			}
		}
		if c.Cpus != "" {
			top, err := maxCPU(c.Cpus)
			if err != nil {
				return fmt.Errorf("linux.resources.cpu.cpus %q: %w; write a list such as 0-1,3", c.Cpus, err)
			}
			if top >= v.VCPUs {
				return fmt.Errorf("linux.resources.cpu.cpus %q names CPU %d, but the VM has %d vCPUs (0-%d): %s", c.Cpus, top, v.VCPUs, v.VCPUs-1, fix)
			}
		}
	}
	return nil
}

// MemoryLimit is spec's container memory limit in bytes, 0 for none.
func MemoryLimit(spec *specs.Spec) int64 {
	if spec == nil || spec.Linux == nil || spec.Linux.Resources == nil || spec.Linux.Resources.Memory == nil || spec.Linux.Resources.Memory.Limit == nil {
		return 0
	}
	return max(*spec.Linux.Resources.Memory.Limit, 0)
}

// MemoryFor is the memory the VM is to have once a container of it whose
// memory limit was oldLimit (bytes; 0: none) gets r: the VM's memory moves
// by the change of the limit (a pod VM holds the sum of its containers'
// limits and the overhead, ADR 007), a container that had no limit
// counting as having had all of ContainerMiB, and never below what the
// container alone needs (its limit plus OverheadMiB). Without a memory
// limit in r, or with the size unknown (zero VCPUs), the VM keeps its
// memory. Past MemoryCeiling it is refused (ADR 031).
func (v VMSize) MemoryFor(r *specs.LinuxResources, oldLimit int64) (int, error) {
	if r == nil || r.Memory == nil || r.Memory.Limit == nil || *r.Memory.Limit <= 0 || v.VCPUs == 0 {
		return v.MemoryMiB, nil
	}
	limit := mibFor(uint64(*r.Memory.Limit))
	old := v.ContainerMiB()
	if oldLimit > 0 {
		old = mibFor(uint64(oldLimit))
	}
	want := max(v.MemoryMiB+limit-old, limit+v.OverheadMiB, MinMemoryMiB)
	ceiling := v.MemoryCeiling()
	if want <= ceiling {
		return want, nil
	}
	most := max(min(ceiling-v.MemoryMiB+old, ceiling-v.OverheadMiB), 0)
	return 0, fmt.Errorf("linux.resources.memory.limit %d needs a VM of %d MiB (the limit, overhead_mib %d and the VM's other containers' limits), past the %d MiB this VM can grow to (its headroom: resize_memory_factor times its memory at start, bounded by max_memory_mib; it has %d MiB now): recreate the container (pod) with the larger limit, or ask for at most %d MiB",
		*r.Memory.Limit, want, v.OverheadMiB, ceiling, v.MemoryMiB, most)
}

// maxCPU is the highest CPU a cpuset list ("0-2,5") names.
func maxCPU(list string) (int, error) {
	top := -1
	for part := range strings.SplitSeq(list, ",") {
		lo, hi, ranged := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return 0, fmt.Errorf("%q is not a CPU number", lo)
		}
		b := a
		if ranged {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("%q is not a CPU range", part)
			}
		}
		top = max(top, b)
	}
	return top, nil
}
