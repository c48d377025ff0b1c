package specconv

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts/bootenv"
)

const mib = 1 << 20

// sizeVM derives vcpus and memory from linux.resources. The CPU quota is a
// ceiling, so ceil(quota/period) vcpus can use all of it; more than MaxVCPUs
// is capped, since fewer vcpus only reduce parallelism. The memory limit is
// what the container may use, so the VM gets it plus the guest's overhead.
func sizeVM(sb *VM, spec *specs.Spec, d Defaults) error {
	sb.VCPUs, sb.MemoryMiB, sb.Backend = d.VCPUs, d.MemoryMiB, d.Backend
	if r := spec.Linux.Resources; r != nil {
		if c := r.CPU; c != nil && c.Quota != nil && *c.Quota > 0 && c.Period != nil && *c.Period > 0 {
			sb.VCPUs = cpusFor(uint64(*c.Quota), *c.Period)
		}
		if m := r.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
			sb.MemoryMiB = mibFor(uint64(*m.Limit)) + d.OverheadMiB
		}
	}
	return sizePod(sb, spec, d)
}

// Annotations containerd's CRI sets on a pod's sandbox container: the
// pod's summed limits (ADR 007: the pod's VM holds all its containers).
const (
	AnnotationContainerType    = "io.kubernetes.cri.container-type"
	AnnotationSandboxMemory    = "io.kubernetes.cri.sandbox-memory"
	AnnotationSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	AnnotationSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
)

// sizePod sizes a pod sandbox's VM from the pod's limits, where CRI gives
// them; they win over the sandbox container's own (tiny) resources. A
// value that is absent, zero or negative means no limit and is ignored.
func sizePod(sb *VM, spec *specs.Spec, d Defaults) error {
	a := spec.Annotations
	if a[AnnotationContainerType] != "sandbox" {
		return nil
	}
	num := func(key string) (int64, error) {
		v, ok := a[key]
		if !ok {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("annotations[%q] %q: must be an integer", key, v)
		}
		return n, nil
	}
	mem, err := num(AnnotationSandboxMemory)
	if err != nil {
		return err
	}
	if mem > 0 {
		sb.MemoryMiB = max(mibFor(uint64(mem))+d.OverheadMiB, sb.MemoryMiB)
	}
	q, err := num(AnnotationSandboxCPUQuota)
	if err != nil {
		return err
	}
	p, err := num(AnnotationSandboxCPUPeriod)
	if err != nil {
		return err
	}
	if q > 0 && p > 0 {
		sb.VCPUs = max(cpusFor(uint64(q), uint64(p)), sb.VCPUs)
	}
	return nil
}

// cpusFor is ceil(quota/period) vcpus, 1..MaxVCPUs.
func cpusFor(q, p uint64) int {
	n := q / p
	if q%p != 0 {
		n++
	}
	return int(min(max(n, 1), MaxVCPUs))
}

// mibFor is bytes rounded up to MiB.
func mibFor(l uint64) int {
	n := l / mib
	if l%mib != 0 {
		n++
	}
	return int(n)
}

// applyAnnotations applies the io.msb.* overrides (those checkAnnotations
// let through). The sizing ones may only shrink the VM that sizeVM made
// from the limits: whoever writes the pod's annotations does not get a VM
// bigger than the limits the scheduler, ResourceQuota and the
// RuntimeClass overhead account for. A bigger ask is refused, not clamped,
// so that the VM is never silently other than asked.
func applyAnnotations(sb *VM, spec *specs.Spec) error {
	a := spec.Annotations
	bad := func(key, v, want string) error {
		return fmt.Errorf("annotations[%q] %q: %s", key, v, want)
	}
	if v, ok := a[AnnotationVCPUs]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxVCPUs {
			return bad(AnnotationVCPUs, v, fmt.Sprintf("must be an integer 1..%d", MaxVCPUs))
		}
		if n > sb.VCPUs {
			return bad(AnnotationVCPUs, v, fmt.Sprintf("over its bound of %d vCPUs (the CPU limit rounded up, the pod's for a pod sandbox; vcpus in /etc/msb/config.toml without one): the annotation can only shrink the VM; ask for at most %d or raise the CPU limit", sb.VCPUs, sb.VCPUs))
		}
		sb.VCPUs = n
	}
	if v, ok := a[AnnotationMemoryMiB]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < MinMemoryMiB {
			return bad(AnnotationMemoryMiB, v, fmt.Sprintf("must be an integer number of MiB, at least %d", MinMemoryMiB))
		}
		if n > sb.MemoryMiB {
			return bad(AnnotationMemoryMiB, v, fmt.Sprintf("over its bound of %d MiB (the memory limit plus overhead_mib, the pod's for a pod sandbox; memory_mib in /etc/msb/config.toml without one): the annotation can only shrink the VM; ask for at most %d or raise the memory limit", sb.MemoryMiB, sb.MemoryMiB))
		}
		sb.MemoryMiB = n
	}
	if v, ok := a[AnnotationBackend]; ok {
		if !validBackend(v) {
			return bad(AnnotationBackend, v, "must be one of "+strings.Join(Backends, ", "))
		}
		sb.Backend = v
	}
	if v, ok := a[AnnotationHandoffInit]; ok {
		if !path.IsAbs(v) || strings.ContainsAny(v, "\x00\n") {
			return bad(AnnotationHandoffInit, v, "must be an absolute path inside the container rootfs (e.g. /sbin/init)")
		}
		sb.Boot.HandoffInit = v
		sb.Boot.HandoffInitArgs = append([]string(nil), spec.Process.Args...)
		if len(spec.Process.Env) > 0 {
			sb.Boot.HandoffInitEnv = append([]string(nil), spec.Process.Env...)
		}
	}
	return nil
}

// rlimitIDs are Linux's resource numbers; the guest agent gets numbers so it
// needs no name table of its own.
var rlimitIDs = map[string]int{
	"RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
	"RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
	"RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
	"RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}

func rlimits(rs []specs.POSIXRlimit) ([]bootenv.Rlimit, error) {
	var out []bootenv.Rlimit
	seen := map[string]int{}
	for i, r := range rs {
		id, ok := rlimitIDs[r.Type]
		if !ok {
			return nil, fmt.Errorf("process.rlimits[%d].type %q: unknown rlimit; use a Linux name such as RLIMIT_NOFILE", i, r.Type)
		}
		if j, dup := seen[r.Type]; dup {
			return nil, fmt.Errorf("process.rlimits[%d].type %q: already set by process.rlimits[%d]; keep one", i, r.Type, j)
		}
		seen[r.Type] = i
		if r.Soft > r.Hard {
			return nil, fmt.Errorf("process.rlimits[%d] %s: soft %d exceeds hard %d; the kernel refuses that", i, r.Type, r.Soft, r.Hard)
		}
		out = append(out, bootenv.Rlimit{Resource: id, Soft: r.Soft, Hard: r.Hard})
	}
	return out, nil
}

// checkAnnotations refuses io.msb.* annotations that no enable pattern
// matches: the VM's backend and handoff init are the admin's to allow,
// since CRI can pass pod annotations through to the spec.
func checkAnnotations(spec *specs.Spec, enable []string) error {
	var res []*regexp.Regexp
	for _, p := range enable {
		re, err := regexp.Compile("^(?:" + p + ")$")
		if err != nil {
			return fmt.Errorf("enable_annotations %q: %w", p, err)
		}
		res = append(res, re)
	}
	keys := make([]string, 0, len(spec.Annotations))
	for k := range spec.Annotations {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, "io.msb.") {
			continue
		}
		if !slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(k) }) {
			return fmt.Errorf("annotations[%q]: not enabled for this runtime; an admin can allow it with a pattern in enable_annotations in /etc/msb/config.toml", k)
		}
	}
	return nil
}

// checkBounds refuses a VM bigger than the configured bounds.
func checkBounds(sb *VM, d Defaults) error {
	if d.MaxVCPUs > 0 && sb.VCPUs > d.MaxVCPUs {
		return fmt.Errorf("VM vcpus %d (from the CPU limit or %s): over max_vcpus %d in /etc/msb/config.toml; ask for fewer CPUs", sb.VCPUs, AnnotationVCPUs, d.MaxVCPUs)
	}
	if d.MaxMemoryMiB > 0 && sb.MemoryMiB > d.MaxMemoryMiB {
		return fmt.Errorf("VM memory %d MiB (from the memory limit plus overhead, or %s): over max_memory_mib %d in /etc/msb/config.toml; ask for less memory", sb.MemoryMiB, AnnotationMemoryMiB, d.MaxMemoryMiB)
	}
	return nil
}
