package specconv

import (
	"fmt"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// VMSize is a running VM's size and the part of its memory the guest
// itself needs (overhead_mib when it was sized): what an update of a
// container's resources can ask for in it. A VM's size is fixed at boot,
// so a limit past it would only be a number in the guest's cgroup.
type VMSize struct {
	VCPUs       int `json:"vcpus"`
	MemoryMiB   int `json:"memoryMiB"`
	OverheadMiB int `json:"overheadMiB"`
}

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

// CheckUpdate refuses resources a container of this VM asks for in an
// update that the VM cannot give: a memory limit over ContainerMiB, a CPU
// quota over its vCPUs, a cpuset naming a CPU it lacks. Lowering and
// anything within the VM pass; so does a zero VMSize (size unknown).
func (v VMSize) CheckUpdate(r *specs.LinuxResources) error {
	if r == nil || v.VCPUs == 0 {
		return nil
	}
	const fix = "msb cannot grow a running VM yet; recreate the container (pod) with the larger limit, or ask for at most that"
	if m := r.Memory; m != nil && m.Limit != nil && *m.Limit > 0 && mibFor(uint64(*m.Limit)) > v.ContainerMiB() {
		return fmt.Errorf("linux.resources.memory.limit %d exceeds the %d MiB the VM can give a container (the VM has %d MiB, %d of them the guest's own, overhead_mib): %s",
			*m.Limit, v.ContainerMiB(), v.MemoryMiB, v.MemoryMiB-v.ContainerMiB(), fix)
	}
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
