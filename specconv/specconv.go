// Package specconv translates an OCI runtime spec into what msb needs to run
// it in a microVM: the VM's size and backend, the host directories, files
// and disks to hand to the VMM, the guest boot env, and the guest-side OCI
// spec (host paths rewritten to the guest paths where the agent mounts
// them) that runc runs inside the guest.
//
// It is pure: it never touches the filesystem or processes, so every
// decision is testable from a spec alone. Host lookups (resolving sources,
// stat) happen before, in mounts.Classify; side effects (staging, locking)
// after, in mounts.Prepare.
//
// What cannot work in a VM is refused with an error that names the spec
// field, says why, and says what to change.
package specconv

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/mounts/bootenv"
)

// Guest directories where the agent mounts what the host provides, each
// entry under its tag. runc then only bind-mounts from here (ADR 002).
const (
	GuestSharesDir = "/run/msb/shares"
	GuestFilesDir  = "/run/msb/files"
	GuestDisksDir  = "/run/msb/disks"
	GuestTmpfsDir  = "/run/msb/tmpfs"
	// GuestPodTmpfsDir holds a pod VM's tmpfs that its containers share
	// (mounts.KindPodTmpfs, ADR 032), each under its tag: one per volume
	// for the whole VM, not below a container's own GuestDir.
	GuestPodTmpfsDir = "/run/msb/podtmpfs"
)

// Annotations that override the VM's configuration per container or pod.
const (
	AnnotationVCPUs       = "io.msb.vcpus"
	AnnotationMemoryMiB   = "io.msb.memory-mib"
	AnnotationBackend     = "io.msb.backend"
	AnnotationHandoffInit = "io.msb.handoff-init"
)

// Limits on VM sizes.
const (
	MaxVCPUs     = 255
	MinMemoryMiB = 64
)

// Backends accepted in Defaults.Backend and the io.msb.backend annotation.
var Backends = []string{"auto", "libkrun", "qemu"}

// Defaults are the runtime's configured values, used where the spec and
// annotations say nothing.
type Defaults struct {
	VCPUs     int
	MemoryMiB int
	// OverheadMiB is added to the container's memory limit for the guest
	// kernel, agent and runc.
	OverheadMiB int
	Backend     string
	// MaxVCPUs and MaxMemoryMiB bound the VM (0: no bound); a bigger one
	// is refused, naming the bound.
	MaxVCPUs, MaxMemoryMiB int
	// EnableAnnotations are the regexps (whole names) of the io.msb.*
	// annotations the spec may set; others are refused.
	EnableAnnotations []string
}

// Input is everything Convert needs; all host lookups are already done.
type Input struct {
	Spec *specs.Spec
	// Mounts is mounts.Classify(Spec.Mounts, bundle).
	Mounts []mounts.Mount
	// RootfsHostPath is the resolved host rootfs directory.
	RootfsHostPath string
	// StageDir is the per-sandbox host directory for single-file binds.
	StageDir    string
	ContainerID string
	Defaults    Defaults

	// Pod mode (ADR 007): the container joins a VM that already runs its
	// pod's sandbox container. GuestDir is the container's own guest
	// directory: its shares, files and tmpfs are mounted below it instead
	// of below /run/msb, so containers of one VM never collide. Disks are
	// refused in pod mode (nothing can be hot-plugged).
	GuestDir string
	// SandboxNamespaces maps a namespace type to the guest path of the
	// sandbox container's namespace (/proc/<pid>/ns/net). A
	// linux.namespaces path of a type listed here is rewritten to it
	// instead of refused; any other path is still refused.
	SandboxNamespaces map[specs.LinuxNamespaceType]string
}

// podMode reports whether in describes a container joining a pod VM.
func (in Input) podMode() bool { return in.GuestDir != "" }

// VM is what a container's spec asks of its VM: size, backend, boot env,
// shares, staged files, disks and the spec the guest runs.
type VM struct {
	VCPUs     int
	MemoryMiB int
	Backend   string
	// Shares are all directories the VMM exports: the rootfs, bind-mounted
	// directories, and the stage directory of each single-file bind.
	Shares []mounts.Share
	// Files are the single-file binds for mounts.Prepare to stage.
	Files []mounts.FileStage
	// Disks are attached with virtio-blk, serial = Tag.
	Disks []mounts.Disk
	Boot  bootenv.Env
	// GuestSpec is a deep copy of the spec with host paths rewritten.
	GuestSpec *specs.Spec
	// NetNS is the host network namespace path the spec names, which the
	// VMM process joins ("" for a new one).
	NetNS string
}

// Convert checks that in.Spec can run in a VM and builds its Sandbox. It
// does not modify in.
func Convert(in Input) (*VM, error) {
	spec := in.Spec
	if spec == nil {
		return nil, errors.New("spec is nil")
	}
	if err := checkInput(in); err != nil {
		return nil, err
	}
	if err := refuseUnsupported(spec, in); err != nil {
		return nil, err
	}
	guest, err := deepCopy(spec)
	if err != nil {
		return nil, err
	}
	sb := &VM{GuestSpec: guest}
	for i, ns := range guest.Linux.Namespaces {
		if ns.Path == "" {
			continue
		}
		if ns.Type == specs.NetworkNamespace && in.SandboxNamespaces[ns.Type] == "" {
			// The VMM joins it on the host; the guest makes its own.
			sb.NetNS = ns.Path
		}
		guest.Linux.Namespaces[i].Path = in.SandboxNamespaces[ns.Type]
	}
	// Hooks run on the host (package hooks), never in the guest.
	guest.Hooks = nil
	if err := sizeVM(sb, spec, in.Defaults); err != nil {
		return nil, err
	}
	if err := checkAnnotations(spec, in.Defaults.EnableAnnotations); err != nil {
		return nil, err
	}
	if err := applyAnnotations(sb, spec); err != nil {
		return nil, err
	}
	if err := checkBounds(sb, in.Defaults); err != nil {
		return nil, err
	}
	if err := convertMounts(sb, in); err != nil {
		return nil, err
	}
	if err := bootProcess(sb, spec); err != nil {
		return nil, err
	}
	// Encode validates the whole boot env; fail here, with the spec at
	// hand, rather than when the VM is already being started.
	if _, err := sb.Boot.Encode(); err != nil {
		return nil, fmt.Errorf("guest boot env: %w", err)
	}
	return sb, nil
}

func checkInput(in Input) error {
	if in.ContainerID == "" {
		return errors.New("container id is empty")
	}
	if in.GuestDir != "" && (!path.IsAbs(in.GuestDir) || path.Clean(in.GuestDir) != in.GuestDir) {
		return fmt.Errorf("guest dir %q must be a clean absolute path", in.GuestDir)
	}
	for t, p := range in.SandboxNamespaces {
		if !path.IsAbs(p) {
			return fmt.Errorf("sandbox %s namespace guest path %q must be absolute", t, p)
		}
	}
	if !filepath.IsAbs(in.RootfsHostPath) {
		return fmt.Errorf("rootfs host path %q must be absolute", in.RootfsHostPath)
	}
	if len(in.Mounts) != len(in.Spec.Mounts) {
		return fmt.Errorf("got %d classified mounts for %d spec mounts; pass mounts.Classify(spec.Mounts, bundle)", len(in.Mounts), len(in.Spec.Mounts))
	}
	for i, m := range in.Mounts {
		if m.Index != i {
			return fmt.Errorf("classified mount %d has Index %d; pass mounts.Classify(spec.Mounts, bundle) unchanged", i, m.Index)
		}
	}
	d := in.Defaults
	if d.VCPUs < 1 || d.VCPUs > MaxVCPUs {
		return fmt.Errorf("default vcpus %d: must be 1..%d; fix the runtime config", d.VCPUs, MaxVCPUs)
	}
	if d.MemoryMiB < MinMemoryMiB {
		return fmt.Errorf("default memory %d MiB: must be at least %d; fix the runtime config", d.MemoryMiB, MinMemoryMiB)
	}
	if d.OverheadMiB < 0 {
		return fmt.Errorf("memory overhead %d MiB: must not be negative; fix the runtime config", d.OverheadMiB)
	}
	if !validBackend(d.Backend) {
		return fmt.Errorf("default backend %q: use one of %v; fix the runtime config", d.Backend, Backends)
	}
	return nil
}

func validBackend(b string) bool {
	for _, x := range Backends {
		if b == x {
			return true
		}
	}
	return false
}

func refuseUnsupported(spec *specs.Spec, in Input) error {
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return errors.New("process.args: empty; give the command to run")
	}
	if spec.Root == nil {
		return errors.New("root: missing; the spec needs a root filesystem")
	}
	if err := checkUser(spec.Process.User); err != nil {
		return err
	}
	if h := spec.Hooks; h != nil {
		// Both run in the container's mount namespace, which is in the
		// guest, where neither the hook binaries nor the host paths they
		// expect exist (ADR 008).
		for _, l := range []struct {
			name  string
			hooks []specs.Hook
		}{{"createContainer", h.CreateContainer}, {"startContainer", h.StartContainer}} {
			if len(l.hooks) > 0 {
				return fmt.Errorf("hooks.%s[0] %q: %s hooks run inside the container's mount namespace, which is in the guest VM, where the host's hook binaries do not exist; use a createRuntime or prestart hook (run on the host) instead", l.name, l.hooks[0].Path, l.name)
			}
		}
	}
	if spec.Linux == nil {
		return errors.New(`linux: missing, so no network namespace: host networking cannot be shared with a VM; add "linux": {"namespaces": [{"type": "network"}]}`)
	}
	has := map[specs.LinuxNamespaceType]bool{}
	for i, ns := range spec.Linux.Namespaces {
		has[ns.Type] = true
		if ns.Path != "" && in.SandboxNamespaces[ns.Type] == "" && !(ns.Type == specs.NetworkNamespace && !in.podMode()) {
			if in.podMode() {
				return fmt.Errorf("linux.namespaces[%d].path %q: only the pod sandbox's namespaces can be joined in its VM, and it shares no %s namespace; drop the path", i, ns.Path, ns.Type)
			}
			return fmt.Errorf("linux.namespaces[%d].path %q: a VM cannot join a host namespace; drop the path to get a new %s namespace in the guest", i, ns.Path, ns.Type)
		}
	}
	if !has[specs.NetworkNamespace] {
		return errors.New(`linux.namespaces: no network namespace means host networking, which a VM cannot share (hostNetwork, --network host): the guest has its own network stack; add {"type": "network"} (drop hostNetwork / --network host)`)
	}
	// The host's IPC and PID namespaces are the host kernel's; the guest
	// has its own kernel, so a VM cannot share them (ADR 011).
	if !has[specs.IPCNamespace] {
		return errors.New(`linux.namespaces: no ipc namespace means the host's IPC namespace (hostIPC, --ipc host), which a VM cannot share: its shared memory and semaphores are the host kernel's; add {"type": "ipc"} (drop hostIPC / --ipc host)`)
	}
	if !has[specs.PIDNamespace] {
		return errors.New(`linux.namespaces: no pid namespace means the host's PID namespace (hostPID, --pid host), which a VM cannot share: the host's processes are not in the guest; add {"type": "pid"} (drop hostPID / --pid host)`)
	}
	if err := checkUserMappings(spec.Linux); err != nil {
		return err
	}
	return refuseHostDevices(spec)
}

// checkUserMappings refuses a new user namespace whose mappings leave the
// container's root (ID 0) unmapped, as runc does ("no root user mapping
// found"); crun 1.8 would run it.
func checkUserMappings(l *specs.Linux) error {
	for _, ns := range l.Namespaces {
		if ns.Type != specs.UserNamespace || ns.Path != "" {
			continue
		}
		for _, m := range []struct {
			field string
			ids   []specs.LinuxIDMapping
		}{{"linux.uidMappings", l.UIDMappings}, {"linux.gidMappings", l.GIDMappings}} {
			if len(m.ids) == 0 {
				continue
			}
			mapped := false
			for _, id := range m.ids {
				mapped = mapped || (id.ContainerID == 0 && id.Size > 0)
			}
			if !mapped {
				return fmt.Errorf("%s: no mapping for container ID 0: a new user namespace needs its root mapped; map container ID 0", m.field)
			}
		}
	}
	return nil
}

// deepCopy copies spec through JSON, its defined representation, so the
// guest spec shares no pointers or slices with the caller's.
func deepCopy(spec *specs.Spec) (*specs.Spec, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("copying spec: %w", err)
	}
	var out specs.Spec
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("copying spec: %w", err)
	}
	return &out, nil
}

// bootProcess fills the boot env's hostname and user from the spec.
func bootProcess(sb *VM, spec *specs.Spec) error {
	sb.Boot.Hostname = spec.Hostname
	u := spec.Process.User
	sb.Boot.User = fmt.Sprintf("%d:%d", u.UID, u.GID)
	rl, err := rlimits(spec.Process.Rlimits)
	if err != nil {
		return err
	}
	sb.Boot.Rlimits = rl
	return nil
}

// noID is (uid_t)-1: setuid and setgid take it as "no change", the guest's
// runc refuses it — after a whole boot; refuse it before.
const noID = math.MaxUint32

func checkUser(u specs.User) error {
	const fix = "valid ids are 0..4294967294"
	if u.UID == noID {
		return fmt.Errorf("process.user.uid %d: (uid_t)-1 is not a user id; %s", u.UID, fix)
	}
	if u.GID == noID {
		return fmt.Errorf("process.user.gid %d: (gid_t)-1 is not a group id; %s", u.GID, fix)
	}
	for i, g := range u.AdditionalGids {
		if g == noID {
			return fmt.Errorf("process.user.additionalGids[%d] %d: (gid_t)-1 is not a group id; %s", i, g, fix)
		}
	}
	return nil
}
