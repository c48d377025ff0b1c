package vmmproc

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/kvmprobe"
	"github.com/msb-dev/msb/vmm"
)

// The host memory a VM needs besides its guest RAM (docs/configuration.md,
// "Host cgroup"), measured with qemu 7.2 under TCG on x86-64, 1 vCPU,
// 256 and 512 MiB guests, idle and with the guest RAM filled: qemu's own
// anonymous memory besides guest RAM and translation cache 25 MiB, the
// VMM process's 2-4 MiB, kernel memory 2 MiB, and the file pages a cgroup
// is charged for when it is the first to read them (qemu and its
// libraries 20 MiB, the distribution's guest kernel 58 and initramfs 26
// MiB, msb's own 24 and what it reads of its root disk, the msb-runtime
// binary 15 MiB): about 150 MiB. Under TCG the translation
// cache adds up to its size (tcgTBSizeMiB).
const (
	hostOverheadBaseMiB = 160
	hostOverheadTCGMiB  = tcgTBSizeMiB
	// hostCPUOverhead is the CPU the cgroup's quota grants beyond one CPU
	// per vCPU, in thousandths: the hypervisor's main loop and I/O threads
	// and the VMM's relay.
	hostCPUOverhead = 500
	cpuPeriodUs     = 100000
	// hostPidsMax bounds the tasks (threads) of the VMM process and its
	// hypervisor: the VMM's Go runtime (some 10-30), qemu's main loop,
	// RCU, one thread per vCPU and its I/O worker pool (up to 64), with
	// room to spare; an escaped qemu cannot fork-bomb the host.
	hostPidsMax = 1024
)

// HostOverheadMiB is the host memory, beyond its guest RAM, that a VM
// under backend (qemu or libkrun) takes; tcg says qemu runs under TCG.
func HostOverheadMiB(backend string, tcg bool) int {
	if backend == vmm.BackendQEMU && tcg {
		return hostOverheadBaseMiB + hostOverheadTCGMiB
	}
	return hostOverheadBaseMiB
}

// HostLimits are the cgroup limits of a VM of vcpus and memMiB under
// backend: memory = guest memory + overhead (HostOverheadMiB unless
// overheadMiB > 0), CPU quota = vcpus + hostCPUOverhead/1000 CPUs.
func HostLimits(vcpus, memMiB int, h *vmm.HostResources, backend string, tcg bool) *specs.LinuxResources {
	over := h.OverheadMiB
	if over == 0 {
		over = HostOverheadMiB(backend, tcg)
	}
	limit := int64(memMiB+over) << 20
	quota := int64(vcpus)*cpuPeriodUs + hostCPUOverhead*cpuPeriodUs/1000
	period := uint64(cpuPeriodUs)
	pids := int64(hostPidsMax)
	r := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Pids:   &specs.LinuxPids{Limit: &pids},
	}
	if h.CPUShares > 0 {
		shares := h.CPUShares
		r.CPU.Shares = &shares
	}
	return r
}

// hostCgroup is the cgroup the VMM process moved into.
type hostCgroup struct {
	path string
	// back moves the VMM process back into the cgroup it came from (a
	// cgroup with a process in it cannot be removed); del removes path.
	back, del func() error
	// setLimit sets its memory limit in bytes; limitFor is the limit of
	// the VM when it has memMiB (HostLimits): a resize moves it (ADR 031).
	setLimit func(bytes int64) error
	limitFor func(memMiB int) int64
}

// setMemory sets the cgroup's memory limit to a VM of memMiB's (nil:
// nothing to set) and returns it in MiB.
func (c *hostCgroup) setMemory(memMiB int) (int, error) {
	if c == nil || c.setLimit == nil {
		return 0, nil
	}
	l := c.limitFor(memMiB)
	if err := c.setLimit(l); err != nil {
		return 0, fmt.Errorf("host cgroup %s: memory limit %d MiB: %w", c.path, l>>20, err)
	}
	return int(l >> 20), nil
}

// enterHost applies cfg.Host to the VMM process before it starts the
// hypervisor, which inherits both: the OOM score, then the cgroup
// (created with its limits; a controller the host lacks is left out and
// logged). tcg says qemu is to run under TCG. It returns nil when there is
// no cgroup to leave.
func enterHost(cfg *vmm.LaunchConfig, backend string, tcg bool, logf func(string, ...any)) (*hostCgroup, error) {
	if cfg.Host == nil {
		return nil, nil
	}
	return placeHost(cfg, cfg.Host, backend, tcg, logf, os.Getpid())
}

// placeHost gives the VMM process (pids[0]) and the other pids h's OOM
// score and moves them into h's cgroup, created with the limits of cfg's
// VM (a controller the host lacks is left out and logged); back moves the
// VMM process to where it came from. It returns nil when there is no
// cgroup to leave.
func placeHost(cfg *vmm.LaunchConfig, h *vmm.HostResources, backend string, tcg bool, logf func(string, ...any), pids ...int) (*hostCgroup, error) {
	for _, pid := range pids {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(strconv.Itoa(h.OOMScoreAdj)), 0); err != nil {
			return nil, fmt.Errorf("oom_score_adj %d: %w", h.OOMScoreAdj, err)
		}
	}
	if h.Cgroup == "" {
		return nil, nil
	}
	res := HostLimits(cfg.VCPUs, cfg.MemoryMiB, h, backend, tcg)
	var (
		cg      *hostCgroup
		missing []string
		err     error
	)
	switch cgroups.Mode() {
	case cgroups.Unavailable:
		logf("host cgroup %s not created: this host has no cgroup hierarchy mounted", h.Cgroup)
		return nil, nil
	case cgroups.Unified:
		cg, missing, err = enterV2(h.Cgroup, res, pids[0], pids[1:]...)
	default:
		cg, missing, err = enterV1(h.Cgroup, res, pids[0], pids[1:]...)
	}
	if err != nil {
		return nil, fmt.Errorf("host cgroup %s: %w", h.Cgroup, err)
	}
	cg.limitFor = func(memMiB int) int64 { return *HostLimits(cfg.VCPUs, memMiB, h, backend, tcg).Memory.Limit }
	if slices.Contains(missing, "memory") {
		cg.setLimit = nil
	}
	if len(missing) > 0 {
		logf("host cgroup %s: this host has no %s controller: no such limit", h.Cgroup, strings.Join(missing, " or "))
	}
	logf("host cgroup %s: memory limit %d MiB, cpu quota %d/%d us, oom_score_adj %d",
		h.Cgroup, *res.Memory.Limit>>20, *res.CPU.Quota, *res.CPU.Period, h.OOMScoreAdj)
	return cg, nil
}

// allowAny makes cgroup1 skip controllers the host lacks.
func allowAny(c *cgroup1.InitConfig) error {
	c.InitCheck = cgroup1.AllowAny
	return nil
}

// enterV1 and enterV2 create cgroup p with res and move the VMM process
// (pid) and others into it; back moves the VMM process back.
func enterV1(p string, res *specs.LinuxResources, pid int, others ...int) (*hostCgroup, []string, error) {
	orig, err := cgroup1.Load(cgroup1.PidPath(pid), allowAny)
	if err != nil {
		return nil, nil, fmt.Errorf("the VMM's own cgroup: %w", err)
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(p), res, allowAny)
	if err != nil {
		return nil, nil, err
	}
	have := map[cgroup1.Name]bool{}
	for _, s := range cg.Subsystems() {
		have[s.Name()] = true
	}
	var missing []string
	for _, n := range []cgroup1.Name{cgroup1.Memory, cgroup1.Cpu, cgroup1.Pids} {
		if !have[n] {
			missing = append(missing, string(n))
		}
	}
	for _, p := range append([]int{pid}, others...) {
		if err := cg.AddProc(uint64(p)); err != nil {
			_ = orig.AddProc(uint64(pid))
			_ = cg.Delete()
			return nil, nil, fmt.Errorf("join: %w", err)
		}
	}
	setLimit := func(l int64) error { return cg.Update(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &l}}) }
	return &hostCgroup{path: p, back: func() error { return orig.AddProc(uint64(pid)) }, del: cg.Delete, setLimit: setLimit}, missing, nil
}

func enterV2(p string, res *specs.LinuxResources, pid int, others ...int) (*hostCgroup, []string, error) {
	origPath, err := cgroup2.PidGroupPath(pid)
	if err != nil {
		return nil, nil, fmt.Errorf("the VMM's own cgroup: %w", err)
	}
	orig, err := cgroup2.Load(origPath, cgroup2.WithMountpoint(v2Root))
	if err != nil {
		return nil, nil, fmt.Errorf("the VMM's own cgroup: %w", err)
	}
	r := cgroup2.ToResources(res)
	missing := v2Missing(r)
	m, err := cgroup2.NewManager(v2Root, p, r)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range append([]int{pid}, others...) {
		if err := m.AddProc(uint64(p)); err != nil {
			_ = orig.AddProc(uint64(pid))
			_ = m.Delete()
			return nil, nil, fmt.Errorf("join: %w", err)
		}
	}
	setLimit := func(l int64) error { return m.Update(&cgroup2.Resources{Memory: &cgroup2.Memory{Max: &l}}) }
	return &hostCgroup{path: p, back: func() error { return orig.AddProc(uint64(pid)) }, del: m.Delete, setLimit: setLimit}, missing, nil
}

// v2Root is the cgroup v2 mount point (a variable for tests).
var v2Root = "/sys/fs/cgroup"

// v2Missing drops from r the limits whose controller the root does not
// offer, and names them.
func v2Missing(r *cgroup2.Resources) []string {
	b, _ := os.ReadFile(v2Root + "/cgroup.controllers")
	have := map[string]bool{}
	for _, c := range strings.Fields(string(b)) {
		have[c] = true
	}
	var missing []string
	if !have["memory"] {
		r.Memory, missing = nil, append(missing, "memory")
	}
	if !have["cpu"] {
		r.CPU, missing = nil, append(missing, "cpu")
	}
	if !have["pids"] {
		r.Pids, missing = nil, append(missing, "pids")
	}
	return missing
}

// rehome moves the VMM process and its hypervisor (pid hv) from the
// VM's host cgroup into h's, created with the VM's limits, sets both
// processes' OOM score and scheduling priority (0), and removes the old cgroup: a claimed pool VM
// takes its container's place on the host (ADR 020). On error the VM
// stays where it was.
func (v *vm) rehome(h *vmm.HostResources, hv int, logf func(string, ...any)) error {
	if err := h.Validate(); err != nil {
		return err
	}
	pids := []int{os.Getpid(), hv}
	if v.cfg.Nice != 0 {
		for _, pid := range pids {
			if err := renice(pid, 0); err != nil {
				return err
			}
		}
	}
	cg, err := placeHost(v.cfg, h, vmm.BackendQEMU, v.tcg, logf, pids...)
	if err != nil || cg == nil {
		return err
	}
	if old := v.host; old != nil {
		if err := old.del(); err != nil {
			logf("host cgroup %s: remove: %v", old.path, err)
		}
		cg.back = old.back // to where the VMM came from, not the pool's
	}
	v.host = cg
	return nil
}

// leave moves the VMM process back to the cgroup it came from and removes
// the VM's cgroup; the hypervisor has exited (libkrun: the process is
// exiting). Errors are logged: a cgroup left behind is removed by the
// creator (vmm.RemoveHostCgroup).
func (c *hostCgroup) leave(logf func(string, ...any)) {
	if c == nil {
		return
	}
	if err := c.back(); err != nil {
		logf("host cgroup %s: leave it: %v", c.path, err)
		return
	}
	if err := c.del(); err != nil {
		logf("host cgroup %s: remove: %v", c.path, err)
	}
}

// startsTCG says whether qemu is to start under TCG for cfg: asked for,
// or KVM not usable on this host (the cached probe, which startQEMU reads
// again). A VM that falls back from KVM to TCG during its boot keeps the
// smaller KVM limit.
func startsTCG(cfg *vmm.LaunchConfig, backend string) bool {
	if backend != vmm.BackendQEMU || cfg.Host == nil || cfg.Host.Cgroup == "" || cfg.Accel == "kvm" {
		return false
	}
	if cfg.Accel == "tcg" {
		return true
	}
	bin := cfg.QEMU
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	ok, _ := kvmprobe.Usable(bin, cfg.Kernel)
	return !ok
}

// renice sets the scheduling priority of every thread of process pid
// (Linux keeps it per thread; threads made later inherit their maker's).
func renice(pid, nice int) error {
	tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return fmt.Errorf("renice %d: %w", pid, err)
	}
	for _, t := range tids {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("renice %d (thread %d) to %d: %w", pid, tid, nice, err)
		}
	}
	return nil
}
