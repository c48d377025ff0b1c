package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	eventstypes "github.com/containerd/containerd/api/events"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/hooks"
	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/shim/manager"
	"github.com/msb-dev/msb/shim/taskio"
	"github.com/msb-dev/msb/vmm"
)

// guestBundleRoot is where the agent keeps bundles; it only informs.
const guestBundleRoot = "/run/msb/bundles"

// create is Create: mount the rootfs on the bundle, boot the container's
// VM, open its stdio and create the container in the guest. On error
// nothing is left: no VM, mount, state or record.
func (s *service) create(ctx context.Context, r *task.CreateTaskRequest) (_ *container, retErr error) {
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("create %q: restoring from a checkpoint is not supported in msb VMs: %w", r.ID, errdefs.ErrNotImplemented)
	}
	bundle, err := filepath.Abs(r.Bundle)
	if err != nil {
		return nil, err
	}
	spec, err := launch.LoadSpec(bundle)
	if err != nil {
		return nil, err
	}
	cfg, err := loadConfig(r.Options)
	if err != nil {
		return nil, fmt.Errorf("msb config: %w", err)
	}
	binary, err := manager.VMMBinary()
	if err != nil {
		return nil, err
	}

	rec := &manager.Record{ID: r.ID}
	if err := manager.WriteRecord(bundle, rec); err != nil {
		return nil, err
	}
	c := &container{id: r.ID, bundle: bundle, namespace: s.namespace, rec: rec, oom: newOOMState(),
		spec: spec, execs: map[string]*proc{}, idle: make(chan struct{}, 1)}
	defer func() {
		if retErr != nil {
			s.teardown(ctx, c)
		}
	}()

	// A container's rootfs is shifted to the ids of its VM's qemu when that
	// qemu has ids of its own (ADR 022): a pod member's to its pod VM's, a
	// claimed VM's to that VM's, a cold VM's to a range taken for it.
	sb, joined, err := s.podOwner(spec)
	if err != nil {
		return nil, err
	}
	if sb != nil {
		base, kept := sb.vm.jailIDs()
		if base != 0 && spec.Linux != nil && !kept.Covers(spec.Linux.UIDMappings, spec.Linux.GIDMappings) {
			return nil, fmt.Errorf("linux.uidMappings/gidMappings: host ids the pod VM's hypervisor does not keep (its user namespace maps its sandbox's, ADR 022): give the pod's sandbox the same user namespace: %w", errdefs.ErrInvalidArgument)
		}
		rootfs, err := c.mountRootfs(ctx, r, spec, base != 0, base, kept)
		if err != nil {
			return nil, err
		}
		if err := s.joinPod(ctx, c, sb, spec, rootfs, cfg, joined); err != nil {
			return nil, err
		}
		if err := c.createHooks(ctx); err != nil {
			return nil, err
		}
		return c, s.createInGuest(ctx, c, r)
	}
	// Every VM has a pod share: any container's namespaces may be joined
	// (CRI's sandbox, Docker's and nerdctl's container: modes, ADR 030).
	podDir := filepath.Join(vmm.StateDirPath(filepath.Join(config.ShimStateRoot(), s.namespace), r.ID), "containers")
	var hostNS map[specs.LinuxNamespaceType]string
	if spec.Annotations[annotationContainerType] == containerTypeSandbox {
		hostNS = takeHostNamespaces(spec)
	}
	// Whatever this Create takes, the pool is topped up after it.
	defer refillPool(ctx, cfg, binary)
	if v := s.claimVM(ctx, c, rootfsDir(bundle, r, spec), cfg, binary); v != nil {
		c.vm = v // from here c owns v: teardown destroys it
		v.podHostNS = hostNS
		// Recorded with the container's host cgroup the VM now stands in
		// (claimVM), which a crashed shim's cleanup must remove.
		if rec.VMRecord, err = launch.RecordVM(v.launch, v.h); err != nil {
			return nil, err
		}
		if err := manager.WriteRecord(bundle, rec); err != nil {
			return nil, err
		}
		rootfs, err := c.mountRootfs(ctx, r, spec, v.jailIDBase != 0, v.jailIDBase, nil)
		if err != nil {
			return nil, err
		}
		if v.anchor, err = startAnchor(binary, v.claimNetNS, rootfs); err != nil {
			return nil, err
		}
		rec.Anchor = v.anchor.cmd.Process.Pid
		rec.AnchorStart, _ = vmm.ProcStart(rec.Anchor)
		if err := manager.WriteRecord(bundle, rec); err != nil {
			return nil, err
		}
		if err := c.joinVM(ctx, v, spec, rootfs, cfg, nil, true); err != nil {
			return nil, err
		}
		if err := c.createHooks(ctx); err != nil {
			return nil, err
		}
		return c, s.createInGuest(ctx, c, r)
	}
	kept, _ := launch.JailKeptIDs(spec)
	rootfs, err := c.mountRootfs(ctx, r, spec, shiftRootfs(spec, cfg), 0, kept)
	if err != nil {
		return nil, err
	}
	var jailIDBase uint32
	if c.jailIDs != nil {
		jailIDBase = c.jailIDs.Base()
	}
	c.vm, err = startVM(ctx, vmRequest{
		id: r.ID, namespace: s.namespace, bundle: bundle, rootfs: rootfs,
		spec: spec, cfg: cfg, binary: binary, podDir: podDir, jailIDBase: jailIDBase,
	}, func(v *vm) error {
		vr, err := launch.RecordVM(v.launch, v.h)
		if err != nil {
			return err
		}
		rec.VMRecord = vr
		if err := manager.WriteRecord(bundle, rec); err != nil {
			return err
		}
		// The VM boots while the hooks run: they see the VMM's pid and
		// its network namespace, which is the container's.
		c.vm = v
		return c.createHooks(ctx)
	})
	if err != nil {
		return nil, err
	}
	c.vm.podHostNS = hostNS
	return c, s.createInGuest(ctx, c, r)
}

// createHooks runs the spec's prestart and createRuntime hooks on the
// host, as runc does during create: the state names the VMM's pid, whose
// network namespace is the container's.
func (c *container) createHooks(ctx context.Context) error {
	st := hooks.State(c.spec, c.id, c.bundle, specs.StateCreating, int(c.hostPid()))
	if err := hooks.Create(ctx, c.spec, st); err != nil {
		return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// runHooks runs the spec's poststart or poststop hooks; as with runc, a
// failure is logged and the lifecycle goes on.
func (c *container) runHooks(ctx context.Context, phase string, status specs.ContainerState) {
	st := hooks.State(c.spec, c.id, c.bundle, status, int(c.hostPid()))
	if err := hooks.Run(ctx, c.spec, phase, st); err != nil {
		log.G(ctx).WithError(err).Warnf("container %s", c.id)
	}
}

// createInGuest opens c's stdio and creates c in its VM's agent, from
// the guest spec c.guest.
func (s *service) createInGuest(ctx context.Context, c *container, r *task.CreateTaskRequest) error {
	host := taskio.URIs{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	pio, err := taskio.Open(ctx, c.vm.launch.AgentSocket, r.ID, s.namespace, host)
	if err != nil {
		return fmt.Errorf("stdio: %w", err)
	}
	c.init = newProc(c, "", host, pio)
	guest := c.vm.guest
	if c.pod != nil {
		guest = c.pod.guest
	}
	guestSpec, err := json.Marshal(guest)
	if err != nil {
		return err
	}
	resp, err := c.vm.task.Create(ctx, &task.CreateTaskRequest{
		ID:       r.ID,
		Bundle:   guestBundleRoot + "/" + r.ID,
		Terminal: r.Terminal,
		Stdin:    pio.Guest().Stdin,
		Stdout:   pio.Guest().Stdout,
		Stderr:   pio.Guest().Stderr,
		Options:  &anypb.Any{TypeUrl: protocol.GuestSpecTypeURL, Value: guestSpec},
	})
	if err != nil {
		return fmt.Errorf("create container in the guest: %w", fromAgent(err))
	}
	c.init.guestPid = resp.Pid
	return nil
}

// shiftRootfs says whether a cold VM of a container's own gets its rootfs
// overlay mounted shifted for qemu's user namespace (ADR 022): jailed, and
// qemu's namespace maps the VM's own range at its root
// (launch.QEMUOwnRange).
func shiftRootfs(spec *specs.Spec, cfg config.Config) bool {
	return cfg.Jail && launch.QEMUOwnRange(spec)
}

// rootfsDir is the host rootfs directory mountRootfs shares: the bundle's
// rootfs where containerd hands mounts, else the spec's root.path.
func rootfsDir(bundle string, r *task.CreateTaskRequest, spec *specs.Spec) string {
	if len(r.Rootfs) > 0 {
		return filepath.Join(bundle, "rootfs")
	}
	p := spec.Root.Path
	if !filepath.IsAbs(p) {
		p = filepath.Join(bundle, p)
	}
	if real, err := filepath.EvalSymlinks(p); err == nil {
		return real
	}
	return p
}

// mountRootfs mounts the request's rootfs mounts on bundle/rootfs, as
// runc's shim does, and returns the host rootfs directory to share. With
// shift, a single overlay is mounted over layers id-mapped to the host ids
// from shiftTo, or, when 0, a range it takes for the VM (c.jailIDs), and
// to the kept ids (mounts.JailMap); any other rootfs as it is.
func (c *container) mountRootfs(ctx context.Context, r *task.CreateTaskRequest, spec *specs.Spec, shift bool, shiftTo uint32, kept *mounts.KeptIDs) (string, error) {
	if len(r.Rootfs) == 0 {
		p := spec.Root.Path
		if !filepath.IsAbs(p) {
			p = filepath.Join(c.bundle, p)
		}
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("root.path %q: %w: %w", spec.Root.Path, err, errdefs.ErrInvalidArgument)
		}
		if !st.IsDir() {
			return "", fmt.Errorf("root.path %q is not a directory: %w", spec.Root.Path, errdefs.ErrInvalidArgument)
		}
		return filepath.EvalSymlinks(p)
	}
	rootfs := filepath.Join(c.bundle, "rootfs")
	if err := os.Mkdir(rootfs, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	c.rec.Rootfs = rootfs
	if err := manager.WriteRecord(c.bundle, c.rec); err != nil {
		return "", err
	}
	c.rootfs = rootfs
	ms := mount.FromProto(r.Rootfs)
	if shift && len(ms) == 1 && ms[0].Type == "overlay" {
		if err := c.mountShifted(ctx, ms, rootfs, shiftTo, kept); err == nil {
			return rootfs, nil
		}
	}
	if err := mount.All(ms, rootfs); err != nil {
		if uerr := mounts.UnmountBelow(rootfs); uerr != nil {
			log.G(ctx).WithError(uerr).Warn("undo partial rootfs mount")
		}
		c.rootfs = ""
		return "", fmt.Errorf("mount rootfs: %w", err)
	}
	if spec.Root.Path != "rootfs" && filepath.Clean(spec.Root.Path) != rootfs {
		log.G(ctx).Warnf("root.path %q is not the bundle's rootfs: sharing %s, where containerd's mounts are", spec.Root.Path, rootfs)
	}
	return rootfs, nil
}

// mountShifted mounts the overlay ms on rootfs over layers id-mapped to
// the host ids from base, or a range it takes for c's VM when base is 0.
// On error nothing is left and the caller mounts ms as it is (a VM of
// c's own then runs qemu as root of the host, and vmm.log says why; a pod
// member's binds then fail, naming the rootfs).
func (c *container) mountShifted(ctx context.Context, ms []mount.Mount, rootfs string, base uint32, kept *mounts.KeptIDs) error {
	ids := &jail.IDs{}
	if base == 0 {
		var err error
		if ids, err = jail.AllocIDs(c.bundle); err != nil {
			log.G(ctx).WithError(err).Warn("rootfs for an unprivileged qemu")
			return err
		}
		base = ids.Base()
	}
	work := filepath.Join(c.bundle, "layers")
	if err := os.Mkdir(work, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		ids.Release()
		return err
	}
	defer os.Remove(work)
	if err := mounts.MountShifted(ms, rootfs, work, base, kept); err != nil {
		ids.Release()
		log.G(ctx).WithError(err).Warn("rootfs for an unprivileged qemu: mounting it as it is")
		return err
	}
	c.rootfsShifted = true
	if ids.Base() != 0 {
		c.jailIDs = ids
	}
	return nil
}

// teardown removes what create made for c: its VM (stopped, state
// removed), its stdio, its rootfs mount and its record.
func (s *service) teardown(ctx context.Context, c *container) {
	if c.init != nil {
		c.init.io.Abort()
	}
	c.mu.Lock()
	for _, e := range c.execs {
		if e != nil {
			e.io.Abort()
		}
	}
	c.mu.Unlock()
	if c.pod != nil {
		c.pod.leave(ctx)
	}
	if c.ownsVM() && c.vm != nil {
		c.vm.destroy(ctx)
	}
	if c.rootfs != "" {
		if err := mounts.UnmountBelow(c.rootfs); err != nil {
			log.G(ctx).WithError(err).Warnf("unmount rootfs %s", c.rootfs)
		}
	}
	c.jailIDs.Release() // its VM is gone

	if err := os.Remove(filepath.Join(c.bundle, manager.RecordFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("remove shim record")
	}
}

// taskCreateEvent is the TaskCreate event for c.
func taskCreateEvent(c *container, r *task.CreateTaskRequest) *eventstypes.TaskCreate {
	return &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO: &eventstypes.TaskIO{
			Stdin:    r.Stdin,
			Stdout:   r.Stdout,
			Stderr:   r.Stderr,
			Terminal: r.Terminal,
		},
		Checkpoint: r.Checkpoint,
		Pid:        c.hostPid(),
	}
}
