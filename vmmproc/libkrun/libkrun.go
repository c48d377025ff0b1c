// Package libkrun drives libkrun for the VMM process's libkrun backend:
// loading the library with dlopen (cgo; a CGO_ENABLED=0 build cannot),
// refusing one that lacks a call msb makes or one its isolation rests on
// (ADR 015), mapping a launch config onto krun_* calls, and entering the
// VM. It holds no VM state: the VMM process (package vmmproc) supervises.
package libkrun

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/msb-dev/msb/mounts/bootenv"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
)

// Soname is the library the libkrun backend loads when neither
// vmm.LaunchConfig.Libkrun nor $MSB_LIBKRUN names another.
const Soname = "libkrun.so.1"

// Env overrides the libkrun library path (tests, side-by-side installs).
const Env = "MSB_LIBKRUN"

// minVersion is the oldest libkrun msb drives.
const minVersion = "1.10"

// libkrunInstallHint says what to do when libkrun cannot be loaded.
const libkrunInstallHint = "install libkrun and libkrunfw (Fedora/CentOS Stream: dnf install libkrun; " +
	"elsewhere build both from github.com/containers/libkrun and github.com/containers/libkrunfw), " +
	"point " + Env + " at libkrun.so.1, or use backend qemu"

// krunSymbol is one libkrun entry point and the release that added it
// ("" = older than the oldest libkrun msb supports).
type krunSymbol struct {
	name  string
	since string
}

// krunRequired are the calls msb makes; each must resolve.
var krunRequired = []krunSymbol{
	{"krun_set_log_level", ""},
	{"krun_create_ctx", ""},
	{"krun_set_vm_config", ""},
	{"krun_add_virtiofs", ""},
	{"krun_add_disk2", "1.10"},
	{"krun_add_vsock_port2", "1.10"},
	{"krun_set_exec", ""},
	{"krun_set_env", ""},
	{"krun_set_rlimits", ""},
	{"krun_set_workdir", ""},
	{"krun_set_console_output", ""},
	{"krun_start_enter", ""},
}

// krunIsolation are the calls without which a libkrun VM is less isolated
// than a qemu one (ADR 015): a libkrun lacking one is refused, and auto
// takes qemu.
var krunIsolation = []struct {
	krunSymbol
	why string
}{
	{krunSymbol{"krun_add_virtiofs3", "1.18"}, "read-only virtio-fs: without it the guest root every VM shares and every read-only share are writable from the guest"},
	{krunSymbol{"krun_disable_implicit_vsock", ""}, "a vsock without TSI: without it the guest's AF_INET sockets reach the network of the VMM process"},
	{krunSymbol{"krun_add_vsock", ""}, "a vsock without TSI: without it the guest's AF_INET sockets reach the network of the VMM process"},
}

// vmm.Disk formats of krun_add_disk2.
var krunDiskFormat = map[string]uint32{"raw": 0, "qcow2": 1, "vmdk": 2}

// Guest side of the libkrun boot.
const (
	// krunAgentPath is the agent inside GuestRoot: libkrun's init
	// (/init.krun, injected by libkrun) executes it.
	krunAgentPath = "/init"
	// krunRootTag is libkrun's virtio-fs tag of the root (KRUN_FS_ROOT_TAG);
	// libkrun adds its init (/init.krun) to the share with this tag.
	krunRootTag = "/dev/root"
	// krunWorkdir is the agent's working directory; the container's own
	// cwd comes from its OCI spec inside the guest.
	krunWorkdir = "/"
	// krunLogLevel is libkrun's log level (2 = warn) on the VMM's stderr.
	krunLogLevel = 2
)

// krunFixedEnv is all the guest gets through krun_set_env, which libkrun
// puts on the guest kernel command line (readable in the guest's
// /proc/cmdline): the agent channel is vsock, and the agent stays PID 1
// (newer libkrun inits fork the workload unless KRUN_INIT_PID1=1). The
// boot env, with the handoff init's environment, goes over the agent
// channel (Agent.Boot), as with qemu.
var krunFixedEnv = []string{"MSB_CHANNEL=vsock", "KRUN_INIT_PID1=1"}

// krunAPI is the libkrun C API as the VMM calls it. Every method returns
// libkrun's int32: >= 0 on success, -errno on failure.
type krunAPI interface {
	setLogLevel(level uint32) int32
	createCtx() int32
	setVMConfig(ctx uint32, vcpus uint8, mib uint32) int32
	addVirtiofs(ctx uint32, tag, path string) int32
	addVirtiofs3(ctx uint32, tag, path string, shmSize uint64, readOnly bool) int32
	addDisk2(ctx uint32, id, path string, format uint32, readOnly bool) int32
	addVsockPort2(ctx, port uint32, path string, listen bool) int32
	disableImplicitVsock(ctx uint32) int32
	addVsock(ctx, tsiFeatures uint32) int32
	setExec(ctx uint32, path string, argv, envp []string) int32
	setEnv(ctx uint32, envp []string) int32
	setRlimits(ctx uint32, rlimits []string) int32
	setWorkdir(ctx uint32, path string) int32
	setConsoleOutput(ctx uint32, path string) int32
	startEnter(ctx uint32) int32
}

// Lib is a loaded libkrun with every call of krunRequired and
// krunIsolation.
type Lib struct {
	api  krunAPI
	path string
}

// Load loads the libkrun cfg names (cfg.Libkrun, else $MSB_LIBKRUN, else
// Soname) and checks that it has every call msb makes.
func Load(cfg *vmm.LaunchConfig) (*Lib, error) { return load(libPath(cfg)) }

// Path is the library loaded.
func (l *Lib) Path() string { return l.path }

// APILevel describes the libkrun API msb uses.
func (l *Lib) APILevel() string { return ">= 1.18 (read-only virtio-fs, no TSI)" }

// libPath is the library to load for cfg.
func libPath(cfg *vmm.LaunchConfig) string {
	if cfg != nil && cfg.Libkrun != "" {
		return cfg.Libkrun
	}
	if p := os.Getenv(Env); p != "" {
		return p
	}
	return Soname
}

// checkSymbols returns an error naming the first missing call and the
// libkrun release it needs, or nil when the library has every call msb
// makes (krunRequired) and every one its isolation rests on
// (krunIsolation).
func checkSymbols(path string, has func(string) bool) error {
	for _, s := range krunRequired {
		if has(s.name) {
			continue
		}
		if s.since == "" {
			return fmt.Errorf("%s lacks %s, which every libkrun >= %s has: it is not a usable libkrun (a libkrun-sev/-tdx build?); install the plain libkrun >= %s, or use backend qemu",
				path, s.name, minVersion, minVersion)
		}
		return fmt.Errorf("libkrun %s is too old: it lacks %s (added in libkrun %s); msb needs libkrun >= %s: upgrade libkrun, or use backend qemu",
			path, s.name, s.since, minVersion)
	}
	for _, s := range krunIsolation {
		if has(s.name) {
			continue
		}
		since := "a current libkrun"
		if s.since != "" {
			since = "libkrun >= " + s.since
		}
		return fmt.Errorf("libkrun %s is too old to isolate a VM: it lacks %s (%s), needed for %s: upgrade libkrun and libkrunfw to %s, or use backend qemu",
			path, s.name, since, s.why, since)
	}
	return nil
}

// krunError is a failed libkrun call.
type krunError struct {
	call  string
	what  string // the item the call was about, if any
	errno syscall.Errno
}

func (e *krunError) Error() string {
	what := ""
	if e.what != "" {
		what = " for " + e.what
	}
	return fmt.Sprintf("libkrun %s failed%s: %v (errno %d): libkrun's own log lines above in vmm.log say why; fix that setting or use backend qemu",
		e.call, what, e.errno, int(e.errno))
}

func (e *krunError) Unwrap() error { return e.errno }

// check turns a libkrun return value into an error naming the call and,
// optionally, what it was about.
func check(call string, ret int32, what ...string) error {
	if ret >= 0 {
		return nil
	}
	return &krunError{call: call, what: strings.Join(what, " "), errno: syscall.Errno(-ret)}
}

// krunRlimits renders the boot env's rlimits for krun_set_rlimits:
// "RESOURCE=SOFT:HARD" with numeric Linux resource ids.
func krunRlimits(bootEnv []string) ([]string, error) {
	e, err := bootenv.Parse(bootEnv)
	if err != nil {
		return nil, fmt.Errorf("launch config env: %w", err)
	}
	out := make([]string, 0, len(e.Rlimits))
	for _, r := range e.Rlimits {
		out = append(out, strconv.Itoa(r.Resource)+"="+strconv.FormatUint(r.Soft, 10)+":"+strconv.FormatUint(r.Hard, 10))
	}
	return out, nil
}

// Plan is a configured libkrun context, ready for StartEnter.
type Plan struct {
	ctx uint32
}

// Configure maps cfg onto libkrun calls, in the order libkrun requires,
// up to but not including krun_start_enter.
func (l *Lib) Configure(cfg *vmm.LaunchConfig, chanSock string, logf func(string, ...any)) (Plan, error) {
	a := l.api
	var p Plan
	if err := check("krun_set_log_level", a.setLogLevel(krunLogLevel)); err != nil {
		return p, err
	}
	id := a.createCtx()
	if err := check("krun_create_ctx", id); err != nil {
		return p, err
	}
	p.ctx = uint32(id)
	ctx := p.ctx
	if err := check("krun_set_vm_config", a.setVMConfig(ctx, uint8(cfg.VCPUs), uint32(cfg.MemoryMiB)),
		fmt.Sprintf("%d vcpus, %d MiB", cfg.VCPUs, cfg.MemoryMiB)); err != nil {
		return p, err
	}
	// The guest root is shared by every VM: read-only, so one guest
	// cannot change the agent or runc of the next.
	if err := check("krun_add_virtiofs3", a.addVirtiofs3(ctx, krunRootTag, cfg.GuestRoot, 0, true), "guest root", cfg.GuestRoot); err != nil {
		return p, err
	}
	if cfg.Modules != "" {
		logf("module tree %s not shared: libkrun boots libkrunfw's kernel, not the image's (its drivers are built in)", cfg.Modules)
	}
	// vmm.Share.MultiDevs needs nothing here: libkrun's virtio-fs server keys
	// its inodes by host device and inode, so files of different mounts
	// below one share stay apart.
	for _, s := range cfg.Shares {
		what := fmt.Sprintf("share %s (%s)", s.Tag, s.Path)
		var err error
		if s.ReadOnly {
			err = check("krun_add_virtiofs3", a.addVirtiofs3(ctx, s.Tag, s.Path, 0, true), what)
		} else {
			err = check("krun_add_virtiofs", a.addVirtiofs(ctx, s.Tag, s.Path), what)
		}
		if err != nil {
			return p, err
		}
	}
	for _, d := range cfg.Disks {
		f, ok := krunDiskFormat[d.Format]
		if !ok {
			return p, fmt.Errorf("disk %s: format %q unknown: use raw, qcow2 or vmdk", d.Tag, d.Format)
		}
		if err := check("krun_add_disk2", a.addDisk2(ctx, d.Tag, d.Path, f, d.ReadOnly),
			fmt.Sprintf("disk %s (%s, %s)", d.Tag, d.Path, d.Format)); err != nil {
			return p, err
		}
	}
	// The guest gets no network the spec did not share: replace the
	// implicit vsock, whose TSI would proxy guest sockets through this
	// process, with one that only carries the agent's port.
	if err := check("krun_disable_implicit_vsock", a.disableImplicitVsock(ctx)); err != nil {
		return p, err
	}
	if err := check("krun_add_vsock", a.addVsock(ctx, 0), "without TSI"); err != nil {
		return p, err
	}
	// listen=false: the guest connects, the connection appears on chanSock.
	if err := check("krun_add_vsock_port2", a.addVsockPort2(ctx, protocol.VsockPort, chanSock, false),
		fmt.Sprintf("vsock port %d (%s)", protocol.VsockPort, chanSock)); err != nil {
		return p, err
	}
	// An empty, non-NULL envp: NULL would make libkrun copy the VMM's own
	// environment into the guest.
	if err := check("krun_set_exec", a.setExec(ctx, krunAgentPath, []string{}, []string{}),
		"agent", krunAgentPath); err != nil {
		return p, err
	}
	if err := check("krun_set_env", a.setEnv(ctx, krunFixedEnv)); err != nil {
		return p, err
	}
	rl, err := krunRlimits(cfg.Env)
	if err != nil {
		return p, err
	}
	// Only with limits: libkrun's init misparses an empty KRUN_RLIMITS.
	if len(rl) > 0 {
		if err := check("krun_set_rlimits", a.setRlimits(ctx, rl), "rlimits", strings.Join(rl, " ")); err != nil {
			return p, err
		}
	}
	if err := check("krun_set_workdir", a.setWorkdir(ctx, krunWorkdir)); err != nil {
		return p, err
	}
	console := cfg.ConsoleLog
	if console == "" {
		console = filepath.Join(cfg.RuntimeDir, "console.log")
	}
	if err := check("krun_set_console_output", a.setConsoleOutput(ctx, console), "console log", console); err != nil {
		return p, err
	}
	return p, nil
}

// StartEnter runs the VM on the calling thread (lock it to its OS thread
// first). libkrun exits the process when the guest stops (AtExit): it
// returns only when libkrun refuses to start (the error) or returns
// without running the VM (nil).
func (l *Lib) StartEnter(p Plan) error {
	return check("krun_start_enter", l.api.startEnter(p.ctx))
}
