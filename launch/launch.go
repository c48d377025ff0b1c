// Package launch turns one container's spec into a ready VM launch: it
// classifies the mounts, converts the spec, stages single-file binds, locks
// disk images and builds the VMM launch config — the part msb-runtime and
// the containerd shim share. The caller owns the state dir.
package launch

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/mounts/bootenv"
	"github.com/msb-dev/msb/network"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/specconv"
	"github.com/msb-dev/msb/vmm"
)

// Request describes a container to run in its own VM.
type Request struct {
	// ID is the container id; Name names the VM (its relay socket is
	// derived from it) and defaults to ID.
	ID, Name string
	Spec     *specs.Spec
	// Bundle resolves relative mount sources; Rootfs is the host rootfs
	// directory, already resolved (and mounted, for containerd).
	Bundle, Rootfs string
	// StateDir is the VM's runtime dir, made by the caller; AgentSocket is
	// where its relay listens (vmm.AgentSocketPath).
	StateDir, AgentSocket string
	Config                config.Config
	// PodDir, when set, makes the VM a pod VM (ADR 007): this host
	// directory is exported as one more share, mounted in the guest at
	// protocol.PodGuestDir, where later containers of the pod appear.
	PodDir string
	// JailIDBase is the host ids the caller mounted Rootfs shifted to
	// (mounts.MountShifted) and holds for the VM (ADR 022); 0: none.
	JailIDBase uint32
}

// Prepared is a launch whose host resources are reserved.
type Prepared struct {
	Launch *vmm.LaunchConfig
	// GuestSpec is the spec runc runs in the guest.
	GuestSpec *specs.Spec
	release   func() error
}

// Prepare converts and reserves. Errors in the spec or its mounts wrap
// errdefs.ErrInvalidArgument; on any error nothing Prepare made is left.
func Prepare(r Request) (*Prepared, error) {
	c := r.Config
	sb, err := convert(r.Spec, r.Bundle, c, specconv.Input{
		RootfsHostPath: r.Rootfs,
		StageDir:       StageDir(r.StateDir),
		ContainerID:    r.ID,
	})
	if err != nil {
		return nil, err
	}
	if r.PodDir != "" {
		if err := os.MkdirAll(r.PodDir, 0o700); err != nil {
			return nil, fmt.Errorf("pod dir: %w", err)
		}
		// The pod dir holds the binds of several containers' rootfs and
		// volumes: it spans host mounts.
		sb.Shares = append(sb.Shares, mounts.Share{Tag: protocol.PodShareTag, HostPath: r.PodDir, MultiDevs: true})
		sb.Boot.DirMounts = append(sb.Boot.DirMounts, bootenv.DirMount{Tag: protocol.PodShareTag, GuestPath: protocol.PodGuestDir})
	}
	env, err := sb.Boot.Encode()
	if err != nil {
		return nil, fmt.Errorf("guest boot env: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	name := r.Name
	if name == "" {
		name = r.ID
	}
	lc := &vmm.LaunchConfig{
		Version:        vmm.ConfigVersion,
		Name:           name,
		Backend:        sb.Backend,
		RuntimeDir:     r.StateDir,
		AgentSocket:    r.AgentSocket,
		ConsoleLog:     filepath.Join(r.StateDir, "console.log"),
		ConsoleLogMax:  int64(c.ConsoleLogMaxKiB) << 10,
		VCPUs:          sb.VCPUs,
		MemoryMiB:      sb.MemoryMiB,
		MaxMemoryMiB:   memoryCeiling(sb.Backend, sb.MemoryMiB, c),
		Kernel:         c.Kernel,
		Initrd:         c.Initrd,
		RootDisk:       besideKernel(c.Kernel, RootDiskFile, false),
		Modules:        besideKernel(c.Kernel, ModulesDir, true),
		QEMU:           c.QEMU,
		Accel:          c.Accel,
		NoJail:         !c.Jail,
		GuestRoot:      c.GuestRoot,
		Libkrun:        c.Libkrun,
		Env:            env,
		BootTimeout:    vmm.Duration(c.BootTimeoutDuration()),
		KVMBootTimeout: vmm.Duration(c.KVMBootTimeoutDuration()),
		ShutdownGrace:  vmm.Duration(3 * time.Second),
		Cleanup:        []string{r.StateDir},
	}
	if lc.RootDisk != "" {
		lc.Initrd = "" // the image's root disk replaces its initramfs
	}
	if lc.Host, err = HostResources(r.Spec, c); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	lc.NetNS = sb.NetNS
	if lc.NICs, err = network.Plan(lc.NetNS, c.SpareNICs); err != nil {
		return nil, fmt.Errorf("linux.namespaces network: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	lc.JailIDBase, lc.View = r.JailIDBase, r.Rootfs
	lc.JailKeptIDs, lc.JailHostIDs, lc.JailHostRoot = jailIDs(r.Spec)
	for _, s := range sb.Shares {
		shifted := r.JailIDBase != 0 && s.HostPath == r.Rootfs
		lc.Shares = append(lc.Shares, vmm.Share{Tag: s.Tag, Path: s.HostPath, ReadOnly: s.ReadOnly, MultiDevs: s.MultiDevs, Shifted: shifted, Propagated: s.Propagated, IDMappedFile: s.IDMappedFile})
	}
	for _, d := range sb.Disks {
		lc.Disks = append(lc.Disks, vmm.Disk{Tag: d.Tag, Path: d.Path, Format: d.Format, ReadOnly: d.ReadOnly, Backing: c.AllowDiskBackingFiles})
	}
	if err := lc.Validate(); err != nil {
		return nil, err
	}
	if lc.Backend != vmm.BackendLibkrun {
		if _, err := os.Stat(lc.Kernel); err != nil {
			return nil, fmt.Errorf("guest kernel %s: %w: run install.sh or set kernel in %s", lc.Kernel, err, config.DefaultPath)
		}
	}
	release, err := mounts.Prepare(sb.Files, sb.Disks)
	if err != nil {
		return nil, err
	}
	return &Prepared{Launch: lc, GuestSpec: sb.GuestSpec, release: release}, nil
}

// jailIDs says how the jailed qemu of spec's container's VM holds the
// container's ids (ADR 022): a container user namespace's host ids kept
// beside the VM's own range; where they hold host root, a namespace that
// maps the host's ids to themselves (hostIDs); where they reach msb's own
// ranges, root of the host's (hostRoot).
func jailIDs(spec *specs.Spec) (kept *mounts.KeptIDs, hostIDs, hostRoot bool) {
	kept, err := JailKeptIDs(spec)
	if err == nil {
		return kept, false, false
	}
	below := func(ms []specs.LinuxIDMapping) bool {
		for _, m := range ms {
			if uint64(m.HostID)+uint64(m.Size) > jail.IDBase {
				return false
			}
		}
		return true
	}
	hostIDs = below(spec.Linux.UIDMappings) && below(spec.Linux.GIDMappings)
	return nil, hostIDs, !hostIDs
}

// hasUserNS reports whether spec's container has a user namespace with id
// mappings: its pod members' binds are id-mapped for it.
func hasUserNS(spec *specs.Spec) bool {
	return spec.Linux != nil && len(spec.Linux.UIDMappings) > 0
}

// QEMUOwnRange says whether the jailed qemu of spec's container's VM maps
// the VM's own range of ids at its namespace's root, so that the
// container's rootfs is shifted to that range (ADR 022): unless its user
// namespace's host ids cannot be kept (JailKeptIDs).
func QEMUOwnRange(spec *specs.Spec) bool {
	_, err := JailKeptIDs(spec)
	return err == nil
}

// JailKeptIDs are the host ids the jailed qemu of spec's container's VM
// maps to themselves (mounts.JailMap): its user namespace's, which its
// files (remapped or id-mapped) and its guest use; nil without one, an
// error when they cannot be kept (hold host root or reach msb's ranges).
func JailKeptIDs(spec *specs.Spec) (*mounts.KeptIDs, error) {
	if !hasUserNS(spec) {
		return nil, nil
	}
	return mounts.KeptIDsOf(spec.Linux.UIDMappings, spec.Linux.GIDMappings)
}

// StageDir is where a container's single-file binds are staged below its
// state dir.
func StageDir(stateDir string) string { return filepath.Join(stateDir, "files") }

// ModulesDir is the directory beside the guest kernel that holds its whole
// module tree (<release>/ with modules.dep, modules.alias, ...), written by
// package guest (guest.ModulesDir).
const ModulesDir = "modules"

// RootDiskFile is the read-only guest root beside the guest kernel
// (guest.RootDiskFile), written for kernels of msb's own: the guest boots
// from it instead of the initramfs.
const RootDiskFile = "rootfs.img"

// besideKernel returns the image's file (or, with dir, directory) name
// beside the kernel, or "" when the image has none: the module tree of a
// distribution kernel (without it a guest keeps its boot-time modules and
// says so), the root disk of msb's own.
func besideKernel(kernel, name string, dir bool) string {
	if kernel == "" {
		return ""
	}
	p := filepath.Join(filepath.Dir(kernel), name)
	st, err := os.Stat(p)
	if err != nil || st.IsDir() != dir || !dir && !st.Mode().IsRegular() {
		return ""
	}
	return p
}

// convert classifies spec's mounts and converts the spec; in carries the
// rest of the input. Errors in the spec are invalid arguments.
func convert(spec *specs.Spec, bundle string, c config.Config, in specconv.Input) (*specconv.VM, error) {
	ms, err := mounts.Classify(spec.Mounts, bundle)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := checkDiskImages(ms, c.AllowDiskBackingFiles); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if in.GuestDir != "" {
		// A pod member (the shim's and msb-runtime's): a kubelet emptyDir
		// of medium Memory becomes the pod VM's own tmpfs (ADR 032).
		if err := mounts.MarkMemoryVolumes(ms); err != nil {
			return nil, err
		}
	}
	for _, m := range ms {
		if m.Kind != mounts.KindBindDir && m.Kind != mounts.KindBindFile {
			continue
		}
		if u := mounts.UnknownBindOptions(m.Options); len(u) > 0 {
			log.L.Warnf("mounts[%d] %s: options %q mean nothing for a bind mount: ignored, as runc does", m.Index, m.Destination, u)
		}
	}
	in.Spec, in.Mounts = spec, ms
	in.Defaults = specconv.Defaults{VCPUs: c.VCPUs, MemoryMiB: c.MemoryMiB, OverheadMiB: c.OverheadMiB, Backend: c.Backend,
		MaxVCPUs: c.VCPUBound(), MaxMemoryMiB: c.MemoryBound(), EnableAnnotations: c.EnableAnnotations}
	sb, err := specconv.Convert(in)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return sb, nil
}

// Release unstages files and unlocks disks; call it once the VMM process
// has exited. The host cgroup is VMRecord.Remove's. Safe to call twice.
func (p *Prepared) Release() error {
	if p == nil || p.release == nil {
		return nil
	}
	return p.release()
}

// VMMLog is the VMM process's own log in the state dir.
func (p *Prepared) VMMLog() string { return filepath.Join(p.Launch.RuntimeDir, "vmm.log") }

// Spawn starts the VMM process (binary's hidden `vmm` command) attached to
// the caller. The state dir on its argv names the VM in ps and lets a
// cleanup recognise the process. stdio are a container-mode VMM's
// (vmm.SpawnOptions.Stdio).
func (p *Prepared) Spawn(binary string, stdio ...*os.File) (*vmm.Handle, error) {
	h, err := vmm.Spawn(p.Launch, vmm.SpawnOptions{
		Binary: binary,
		Args:   []string{"vmm", p.Launch.RuntimeDir},
		Log:    p.VMMLog(),
		Stdio:  stdio,
	})
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, LogTail(p.VMMLog()))
	}
	return h, nil
}

// VMEnded says why a VM that died unasked ended and the exit status its
// processes get (vmm.ExitKilled or vmm.ExitGuestLost), from its VMM process's
// exit (code and waitErr from vmm.Handle.Wait) and the cause the VMM
// recorded in its state dir (vmm.EndCause). docs/configuration.md lists
// the causes.
func VMEnded(stateDir string, code int, waitErr error) (int, string) {
	if cause, ok := vmm.EndCause(stateDir); ok {
		if code == vmm.ExitKilled {
			return vmm.ExitKilled, cause
		}
		return vmm.ExitGuestLost, cause
	}
	switch {
	case waitErr != nil:
		return vmm.ExitGuestLost, "the VMM process: " + waitErr.Error()
	case code > 128 && code < 128+65:
		return vmm.ExitKilled, fmt.Sprintf("the VMM process was killed (signal %d)", code-128)
	}
	return vmm.ExitGuestLost, fmt.Sprintf("the VMM process exited with status %d", code)
}

// lastLines is the last n lines of the file at path, read from its last
// 64 KiB only (a guest may have written any amount); nil if none.
func lastLines(path string, n int) []string {
	b := vmm.ReadTail(path, 64<<10)
	if len(b) == 0 {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// LastLines is the last n lines of the file at path on one line, joined
// by " | " (for one-line log entries); "" when it is empty or missing.
func LastLines(path string, n int) string { return strings.Join(lastLines(path, n), " | ") }

// LogTail returns the last lines of a log file, formatted for an error, so
// the cause survives the state dir's removal.
func LogTail(path string) string {
	lines := lastLines(path, 15)
	if len(lines) == 0 {
		return ""
	}
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", filepath.Base(path), strings.Join(lines, "\n"))
}
