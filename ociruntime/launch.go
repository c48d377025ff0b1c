package ociruntime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/specconv"
	"github.com/msb-dev/msb/vmm"
)

// Options configure the runtime CLI.
type Options struct {
	// Root is the state root (runc's --root), default /run/msb.
	Root   string
	Config config.Config
	// Self is the msb-runtime binary that serves as the VMM process.
	Self string
}

// sandbox is a prepared launch: state dir made, files staged, disks locked.
// release undoes all of it.
type sandbox struct {
	id       string
	stateDir string
	launch   *vmm.LaunchConfig
	spec     *specconv.Sandbox
	release  func() error
}

// prepare turns a bundle into a launch config and reserves what it needs.
// On error nothing it made is left behind.
func prepare(o Options, bundle, id string) (_ *sandbox, retErr error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	bundle, err := filepath.Abs(bundle)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	spec, err := loadSpec(bundle)
	if err != nil {
		return nil, err
	}
	rootfs, err := rootfsPath(bundle, spec)
	if err != nil {
		return nil, err
	}
	ms, err := mounts.Classify(spec.Mounts, bundle)
	if err != nil {
		return nil, err
	}
	sock, err := vmm.AgentSocketPath(o.Root, id)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Root, 0o711); err != nil {
		return nil, fmt.Errorf("state root: %w", err)
	}
	stateDir := filepath.Join(o.Root, id)
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("container %q already exists (state in %s): pick another id or delete it", id, stateDir)
		}
		return nil, fmt.Errorf("state dir: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(stateDir)
		}
	}()
	sb, err := specconv.Convert(specconv.Input{
		Spec:           spec,
		Mounts:         ms,
		RootfsHostPath: rootfs,
		StageDir:       filepath.Join(stateDir, "files"),
		ContainerID:    id,
		Defaults: specconv.Defaults{
			VCPUs: o.Config.VCPUs, MemoryMiB: o.Config.MemoryMiB,
			OverheadMiB: o.Config.OverheadMiB, Backend: o.Config.Backend,
		},
	})
	if err != nil {
		return nil, err
	}
	env, err := sb.Boot.Encode()
	if err != nil {
		return nil, fmt.Errorf("guest boot env: %w", err)
	}
	release, err := mounts.Prepare(sb.Files, sb.Disks)
	if err != nil {
		return nil, err
	}
	lc := &vmm.LaunchConfig{
		Version:       vmm.ConfigVersion,
		Name:          id,
		Backend:       sb.Backend,
		RuntimeDir:    stateDir,
		AgentSocket:   sock,
		ConsoleLog:    filepath.Join(stateDir, "console.log"),
		VCPUs:         sb.VCPUs,
		MemoryMiB:     sb.MemoryMiB,
		Kernel:        o.Config.Kernel,
		Initrd:        o.Config.Initrd,
		QEMU:          o.Config.QEMU,
		GuestRoot:     o.Config.GuestRoot,
		Libkrun:       o.Config.Libkrun,
		Accel:         o.Config.Accel,
		Env:           env,
		BootTimeout:   vmm.Duration(o.Config.BootTimeoutDuration()),
		ShutdownGrace: vmm.Duration(3 * time.Second),
		Cleanup:       []string{stateDir},
	}
	for _, s := range sb.Shares {
		lc.Shares = append(lc.Shares, vmm.Share{Tag: s.Tag, Path: s.HostPath, ReadOnly: s.ReadOnly})
	}
	for _, d := range sb.Disks {
		lc.Disks = append(lc.Disks, vmm.Disk{Tag: d.Tag, Path: d.Path, Format: d.Format, ReadOnly: d.ReadOnly})
	}
	if err := lc.Validate(); err != nil {
		release()
		return nil, err
	}
	if _, err := os.Stat(lc.Kernel); err != nil && lc.Backend != vmm.BackendLibkrun {
		release()
		return nil, fmt.Errorf("guest kernel %s: %w: run install.sh or set kernel in %s", lc.Kernel, err, config.DefaultPath)
	}
	return &sandbox{id: id, stateDir: stateDir, launch: lc, spec: sb, release: release}, nil
}

// destroy releases locks and removes the state dir.
func (s *sandbox) destroy() {
	if s.release != nil {
		_ = s.release()
	}
	_ = os.RemoveAll(s.stateDir)
	// The VMM removes its socket; this covers a VMM that was SIGKILLed.
	_ = os.Remove(s.launch.AgentSocket)
}

func (s *sandbox) spawn(o Options) (*vmm.Handle, error) {
	return vmm.Spawn(s.launch, vmm.SpawnOptions{
		Binary: o.Self,
		Args:   []string{"vmm", s.stateDir}, // informational: tells operators which VM this is
		Log:    filepath.Join(s.stateDir, "vmm.log"),
	})
}
