package launch

import (
	"fmt"
	"os"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/specconv"
)

// MemberRequest describes a container that joins its pod's running VM
// (ADR 007) instead of booting one.
type MemberRequest struct {
	ID     string
	Spec   *specs.Spec
	Bundle string
	Rootfs string // host rootfs directory, mounted
	// StageDir is the host directory for this container's single-file
	// binds; GuestDir is its own guest directory (specconv.Input.GuestDir).
	StageDir, GuestDir string
	// SandboxNamespaces are the guest paths of the sandbox's namespaces.
	SandboxNamespaces map[specs.LinuxNamespaceType]string
	Config            config.Config
}

// Member is a pod container converted and staged: the host directories
// to expose below the pod dir (each under its tag), the env for
// Agent.Prepare and the guest spec.
type Member struct {
	Shares    []mounts.Share
	Env       []string
	GuestSpec *specs.Spec
	release   func() error
}

// PrepareMember converts r in specconv's pod mode and stages its files.
// Errors in the spec wrap errdefs.ErrInvalidArgument; on error nothing is
// left.
func PrepareMember(r MemberRequest) (*Member, error) {
	sb, err := convert(r.Spec, r.Bundle, r.Config, specconv.Input{
		RootfsHostPath:    r.Rootfs,
		StageDir:          r.StageDir,
		ContainerID:       r.ID,
		GuestDir:          r.GuestDir,
		SandboxNamespaces: r.SandboxNamespaces,
	})
	if err != nil {
		return nil, err
	}
	// The VM's own settings (hostname, user, rlimits) stay the sandbox's.
	sb.Boot.Hostname, sb.Boot.User, sb.Boot.Rlimits = "", "", nil
	env, err := sb.Boot.Encode()
	if err != nil {
		return nil, fmt.Errorf("guest env: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if len(sb.Files) > 0 {
		if err := os.MkdirAll(r.StageDir, 0o700); err != nil {
			return nil, fmt.Errorf("stage dir: %w", err)
		}
	}
	release, err := mounts.Prepare(sb.Files, nil)
	if err != nil {
		return nil, err
	}
	return &Member{Shares: sb.Shares, Env: env, GuestSpec: sb.GuestSpec, release: release}, nil
}

// Release unstages the member's files; safe to call twice.
func (m *Member) Release() error {
	if m == nil || m.release == nil {
		return nil
	}
	return m.release()
}

// Shape is what decides whether a container fits a pool VM (ADR 020):
// the VM it would boot, as Prepare would size it.
type Shape struct {
	VCPUs, MemoryMiB int
	Backend          string
	// NetNS is the host network namespace the spec names ("" for a new
	// one); Disks, how many block devices it attaches.
	NetNS string
	Disks int
	// Boot names a setting the VM takes at boot from the spec and a VM
	// booted for another cannot: a handoff init, or a hostname without a
	// UTS namespace of the container's own (it is then the guest's).
	Boot string
}

// ShapeOf converts spec as Prepare would and returns the shape of its VM.
func ShapeOf(spec *specs.Spec, bundle, rootfs, id string, c config.Config) (Shape, error) {
	sb, err := convert(spec, bundle, c, specconv.Input{RootfsHostPath: rootfs, StageDir: "/nonexistent", ContainerID: id})
	if err != nil {
		return Shape{}, err
	}
	sh := Shape{VCPUs: sb.VCPUs, MemoryMiB: sb.MemoryMiB, Backend: sb.Backend, NetNS: sb.NetNS, Disks: len(sb.Disks)}
	uts := false
	for _, ns := range spec.Linux.Namespaces {
		uts = uts || ns.Type == specs.UTSNamespace
	}
	switch {
	case sb.Boot.HandoffInit != "":
		sh.Boot = "a handoff init"
	case spec.Hostname != "" && !uts:
		sh.Boot = "a hostname without a UTS namespace"
	case hasUserNS(spec):
		sh.Boot = "a user namespace (qemu's own namespace maps its host ids from boot, ADR 022)"
	}
	return sh, nil
}
