// Package config reads /etc/msb/config.toml: where the guest image and
// hypervisor live and the default VM size. Every field has a default, so a
// missing file is fine; a malformed one is an error naming the file.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"time"

	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"
)

// DefaultPath is the system config file.
const DefaultPath = "/etc/msb/config.toml"

// MaxPoolSize bounds pool_size: each pooled VM holds its memory idle.
const MaxPoolSize = 16

// Config is the runtime configuration.
type Config struct {
	// Backend is auto, qemu or libkrun.
	Backend string `toml:"backend"`
	// Kernel and Initrd are the guest image for the qemu backend.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	// GuestRoot is the libkrun guest root (agent as /init, runc); Libkrun
	// names the library to load (default libkrun.so.1 from the loader's
	// search path).
	GuestRoot string `toml:"guest_root"`
	Libkrun   string `toml:"libkrun"`
	// QEMU is the qemu-system-x86_64 binary.
	QEMU string `toml:"qemu"`
	// Accel forces kvm or tcg; empty picks kvm when /dev/kvm is usable.
	Accel string `toml:"accel"`
	// Jail runs qemu jailed: a mount namespace with only its VM's files,
	// reduced capabilities, no_new_privs, qemu's seccomp filter
	// (docs/security.md). false is for debugging only.
	Jail bool `toml:"jail"`
	// VCPUs and MemoryMiB size a VM whose spec sets no limits;
	// OverheadMiB is added to a spec's memory limit for the guest kernel
	// and agent.
	VCPUs       int `toml:"vcpus"`
	MemoryMiB   int `toml:"memory_mib"`
	OverheadMiB int `toml:"overhead_mib"`
	// BootTimeout bounds boot up to the agent answering (TCG is slow).
	BootTimeout string `toml:"boot_timeout"`
	// KVMBootTimeout: with accel left to msb, a KVM boot not done by then
	// is retried under TCG (broken nested KVM can hang); empty = 15s.
	KVMBootTimeout string `toml:"kvm_boot_timeout"`
	// SpareNICs is how many NICs a VM gets beyond one per interface its
	// network namespace has at boot, for interfaces that arrive later:
	// before the container starts (Docker's veth, nerdctl's hook) and after
	// (docker network connect; ADR 029). A VM cannot hot-plug NICs.
	SpareNICs int `toml:"spare_nics"`
	// ConsoleLogMaxKiB caps each VM's guest console log (0: 4096 KiB);
	// the oldest half goes when it is reached.
	ConsoleLogMaxKiB int `toml:"console_log_max_kib"`
	// MaxVCPUs and MaxMemoryMiB bound every VM (0: the host's CPUs and
	// RAM); a spec or annotation asking for more is refused.
	MaxVCPUs     int `toml:"max_vcpus"`
	MaxMemoryMiB int `toml:"max_memory_mib"`
	// ResizeMemoryFactor is how far a running qemu VM's memory may grow
	// on an in-place resize, as a multiple of its size at start (bounded
	// by MemoryBound): it boots with that much, the balloon holding all
	// but its size (ADR 031). 1: the VM keeps its size.
	ResizeMemoryFactor int `toml:"resize_memory_factor"`
	// EnableAnnotations are regular expressions, each matched against a
	// whole annotation name, of the io.msb.* annotations a spec may set;
	// any other io.msb.* annotation is refused. The default is none: the
	// pod's author sets the annotations, the node's admin opts in.
	EnableAnnotations []string `toml:"enable_annotations"`
	// AllowDiskBackingFiles lets disk images name other host files (a
	// qcow2 backing or external data file, vmdk extents or parent), which
	// the hypervisor opens as root; by default such images are refused.
	AllowDiskBackingFiles bool `toml:"allow_disk_backing_files"`
	// HostOverheadMiB is what a VM's host cgroup allows beyond the VM's
	// memory for the VMM process and hypervisor; 0: the built-in
	// estimate (vmmproc.HostOverheadMiB).
	HostOverheadMiB int `toml:"host_overhead_mib"`
	// PoolSize is how many booted VMs of the default size the shim keeps
	// ready for containers to claim at Create (warm start, ADR 020); 0
	// (the default) boots every VM at Create. Each idle VM costs what a
	// running one does.
	PoolSize int `toml:"pool_size"`
	// Template starts pool VMs, and a container that would boot one of
	// the pool's size cold, from a saved template instead of a boot: the
	// guest's RAM is mapped copy-on-write from one held copy (ADR 025).
	// qemu backend; off by default.
	Template bool `toml:"template"`
}

// WarmStart reports whether the shim keeps VMs ready ahead of Create: a
// pool of parked VMs, a saved template, or both.
func (c Config) WarmStart() bool { return c.PoolSize > 0 || c.Template }

// Default returns the built-in configuration.
func Default() Config {
	return Config{
		Backend:     "auto",
		Kernel:      "/var/lib/msb/vmlinux",
		Initrd:      "/var/lib/msb/initrd.cpio",
		GuestRoot:   "/var/lib/msb/krunroot",
		QEMU:        "qemu-system-x86_64",
		Jail:        true,
		VCPUs:       1,
		MemoryMiB:   256,
		OverheadMiB: 128,
		BootTimeout: "2m",
		SpareNICs:   2, // Docker's first network and one connected later
		// About 5 MiB per idle 256 MiB VM (ADR 031).
		ResizeMemoryFactor: 2,
	}
}

// VCPUBound is MaxVCPUs, or the host's CPU count when 0.
func (c Config) VCPUBound() int {
	if c.MaxVCPUs > 0 {
		return c.MaxVCPUs
	}
	return runtime.NumCPU()
}

// MemoryBound is MaxMemoryMiB, or the host's RAM when 0 (0 if unknown).
func (c Config) MemoryBound() int {
	if c.MaxMemoryMiB > 0 {
		return c.MaxMemoryMiB
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return int(uint64(si.Totalram) * uint64(si.Unit) >> 20)
}

// MaxResizeMemoryFactor bounds resize_memory_factor: every VM pays for its
// headroom (about 18 MiB of host memory per GiB, ADR 031).
const MaxResizeMemoryFactor = 16

// MemoryCeiling is the most a VM of sizeMiB at start may grow to on a
// resize: ResizeMemoryFactor times its size, bounded by MemoryBound, and
// never less than its size.
func (c Config) MemoryCeiling(sizeMiB int) int {
	f := max(c.ResizeMemoryFactor, 1)
	ceil := sizeMiB * f
	if b := c.MemoryBound(); b > 0 {
		ceil = min(ceil, b)
	}
	return max(ceil, sizeMiB)
}

// Load reads path over the defaults; a missing file yields the defaults.
// MSB_CONFIG in the environment overrides the path (tests, side-by-side
// installs).
func Load(path string) (Config, error) {
	if p := os.Getenv("MSB_CONFIG"); p != "" {
		path = p
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Default(), nil
	}
	if err != nil {
		return Default(), fmt.Errorf("read %s: %w", path, err)
	}
	return Parse(path, b)
}

// LoadRequired reads path, which must exist: a runtime's own config named
// in containerd's runtime options (config_path).
func LoadRequired(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Default(), fmt.Errorf("read %s: %w", path, err)
	}
	return Parse(path, b)
}

// Parse decodes a config file's body over the defaults; name is the file
// (or source) errors mention.
func Parse(name string, b []byte) (Config, error) {
	c := Default()
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return c, fmt.Errorf("%s: unknown key: %s: see docs/configuration.md for the keys", name, sm.String())
		}
		return c, fmt.Errorf("%s: %w", name, err)
	}
	if err := c.validate(); err != nil {
		return c, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

// KVMBootTimeoutDuration parses KVMBootTimeout (validated by Load); 0
// means the VMM's default.
func (c Config) KVMBootTimeoutDuration() time.Duration {
	d, _ := time.ParseDuration(c.KVMBootTimeout)
	return d
}

// BootTimeoutDuration parses BootTimeout (validated by Load).
func (c Config) BootTimeoutDuration() time.Duration {
	d, _ := time.ParseDuration(c.BootTimeout)
	return d
}

func (c Config) validate() error {
	switch c.Backend {
	case "auto", "qemu", "libkrun":
	default:
		return fmt.Errorf("backend %q: use auto, qemu or libkrun", c.Backend)
	}
	switch c.Accel {
	case "", "kvm", "tcg":
	default:
		return fmt.Errorf("accel %q: use kvm, tcg or leave it out", c.Accel)
	}
	if c.VCPUs < 1 || c.VCPUs > 255 {
		return fmt.Errorf("vcpus %d: use 1..255", c.VCPUs)
	}
	if c.MemoryMiB < 64 {
		return fmt.Errorf("memory_mib %d: use at least 64", c.MemoryMiB)
	}
	if c.OverheadMiB < 0 || c.HostOverheadMiB < 0 {
		return fmt.Errorf("overhead_mib %d, host_overhead_mib %d: must not be negative", c.OverheadMiB, c.HostOverheadMiB)
	}
	if c.ConsoleLogMaxKiB < 0 || c.ConsoleLogMaxKiB > 0 && c.ConsoleLogMaxKiB < 16 {
		return fmt.Errorf("console_log_max_kib %d: use at least 16 (or 0 for the default 4096)", c.ConsoleLogMaxKiB)
	}
	if c.MaxVCPUs < 0 || c.MaxMemoryMiB < 0 {
		return fmt.Errorf("max_vcpus %d, max_memory_mib %d: must not be negative (0: the host's)", c.MaxVCPUs, c.MaxMemoryMiB)
	}
	if c.ResizeMemoryFactor < 1 || c.ResizeMemoryFactor > MaxResizeMemoryFactor {
		return fmt.Errorf("resize_memory_factor %d: use 1..%d (1: a VM keeps its size)", c.ResizeMemoryFactor, MaxResizeMemoryFactor)
	}
	for i, re := range c.EnableAnnotations {
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("enable_annotations[%d] %q: %w", i, re, err)
		}
	}
	if c.PoolSize < 0 || c.PoolSize > MaxPoolSize {
		return fmt.Errorf("pool_size %d: use 0..%d (0: no pool)", c.PoolSize, MaxPoolSize)
	}
	if c.SpareNICs < 0 || c.SpareNICs > 8 {
		return fmt.Errorf("spare_nics %d: use 0..8", c.SpareNICs)
	}
	if c.KVMBootTimeout != "" {
		if _, err := time.ParseDuration(c.KVMBootTimeout); err != nil {
			return fmt.Errorf("kvm_boot_timeout %q: a Go duration such as 15s: %w", c.KVMBootTimeout, err)
		}
	}
	if _, err := time.ParseDuration(c.BootTimeout); err != nil {
		return fmt.Errorf("boot_timeout %q: a Go duration such as 2m: %w", c.BootTimeout, err)
	}
	return nil
}

// ShimStateRoot is where the containerd shim keeps its VMs' state dirs,
// sockets and pool: /run/msb/shim, or $MSB_SHIM_STATE_ROOT (tests,
// side-by-side installs).
func ShimStateRoot() string {
	if r := os.Getenv("MSB_SHIM_STATE_ROOT"); r != "" {
		return filepath.Clean(r)
	}
	return "/run/msb/shim"
}

// PoolRoot is the shim's pool of booted VMs (ADR 020), which
// msb-runtime's pool commands manage too.
func PoolRoot() string { return filepath.Join(ShimStateRoot(), "pool") }
