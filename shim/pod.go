package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/mounts"
)

// One VM per pod (ADR 007). CRI marks a pod's containers with these
// annotations; the sandbox (pause) container boots the pod's VM with a pod
// share, later containers of the pod join it.
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	containerTypeSandbox    = "sandbox"
	containerTypeContainer  = "container"
)

// podNamespaces are the sandbox namespaces a pod container may join, with
// their /proc/<pid>/ns names.
var podNamespaces = map[specs.LinuxNamespaceType]string{
	specs.NetworkNamespace: "net",
	specs.IPCNamespace:     "ipc",
	specs.UTSNamespace:     "uts",
	specs.PIDNamespace:     "pid",
	// CRI pins a user namespace on the host for a pod with one (its
	// network namespace's owner); in the guest, runc makes the sandbox's
	// with the spec's mappings, which the pod's containers join.
	specs.UserNamespace: "user",
}

// takeHostNamespaces returns the namespace paths of the types a pod
// shares from a sandbox container's spec and removes all but the
// network's: the VMM joins the pod's host network namespace (made by
// CNI), the guest makes new namespaces, which the pod's containers join.
func takeHostNamespaces(spec *specs.Spec) map[specs.LinuxNamespaceType]string {
	out := map[specs.LinuxNamespaceType]string{}
	if spec.Linux == nil {
		return out
	}
	for i, ns := range spec.Linux.Namespaces {
		if _, ok := podNamespaces[ns.Type]; ok && ns.Path != "" {
			out[ns.Type] = ns.Path
			if ns.Type != specs.NetworkNamespace {
				spec.Linux.Namespaces[i].Path = ""
			}
		}
	}
	return out
}

// joinedNamespaces maps the namespace paths of a member's spec that name
// its owner's namespaces to the guest paths of the owner init's (guestPid)
// namespaces: the types in joined (launch.FindJoin), and a CRI pod's user
// namespace, which FindJoin leaves out, named by the sandbox spec's own
// path (hostNS: CRI pins it on the host) or /proc/<taskPid>/ns/user of
// the sandbox's task pid. Other paths are left out, so specconv refuses
// them.
func joinedNamespaces(spec *specs.Spec, hostNS map[specs.LinuxNamespaceType]string, joined []specs.LinuxNamespaceType, taskPid int, guestPid uint32) map[specs.LinuxNamespaceType]string {
	out := launch.GuestNamespaces(joined, guestPid)
	if spec.Linux == nil {
		return out
	}
	for _, ns := range spec.Linux.Namespaces {
		name, ok := podNamespaces[ns.Type]
		if _, found := launch.JoinableNamespaces[ns.Type]; !ok || found || ns.Path == "" {
			continue
		}
		p := filepath.Clean(ns.Path)
		if (hostNS[ns.Type] != "" && p == filepath.Clean(hostNS[ns.Type])) || p == fmt.Sprintf("/proc/%d/ns/%s", taskPid, name) {
			out[ns.Type] = fmt.Sprintf("/proc/%d/ns/%s", guestPid, name)
		}
	}
	return out
}

// podMember is what a container that joined its pod's VM owns there.
type podMember struct {
	vm       *vm
	dir      string // host: <pod dir>/<id>, the binds below it
	stageDir string // host: staged single files
	member   *launch.Member
	guest    *specs.Spec
	// owned: the VM is the container's own, claimed from the pool; it
	// goes with the container.
	owned bool
	// shifted is its rootfs when mounted over id-mapped layers (bound as
	// it is), else "".
	shifted string
	// scratch is a host directory of its own the guest cannot write (in
	// its bundle), where a read-only overlay it shares is mounted shifted
	// while it is bound (mounts.BindShiftedOverlayIn).
	scratch string
	// mirrors keep its propagated binds in step with the host's mounts,
	// in a pod VM whose qemu has a user namespace of its own.
	mirrors []*mounts.Mirror
}

// ownsVM says whether c's VM is its own: booted for it, or claimed from
// the pool, rather than its pod's.
func (c *container) ownsVM() bool { return c.pod == nil || c.pod.owned }

// isSandbox says whether c is a CRI pod's sandbox container.
func (c *container) isSandbox() bool {
	return c.spec.Annotations[annotationContainerType] == containerTypeSandbox
}

// podSandbox returns the sandbox container whose pod VM a container with
// spec joins, or nil when it boots its own VM.
func (s *service) podSandbox(spec *specs.Spec) *container {
	if spec.Annotations[annotationContainerType] != containerTypeContainer {
		return nil
	}
	id := spec.Annotations[annotationSandboxID]
	if id == "" {
		return nil
	}
	s.mu.Lock()
	sb := s.containers[id]
	s.mu.Unlock()
	if sb == nil || (sb.pod != nil && !sb.pod.owned) || sb.vm == nil || sb.vm.podDir == "" || sb.vm.isDead() {
		return nil
	}
	return sb
}

// podOwner returns the container whose VM a container with spec joins,
// and the namespace types its spec names there (launch.FindJoin): its CRI
// pod's sandbox, or the container of this shim whose namespaces the spec
// names by its task pid (Docker's and nerdctl's container: modes, ADR
// 030; the manager sent the container to this shim for it). nil when it
// boots its own VM.
func (s *service) podOwner(spec *specs.Spec) (*container, []specs.LinuxNamespaceType, error) {
	var cands []launch.JoinCandidate
	if sb := s.podSandbox(spec); sb != nil {
		cands = []launch.JoinCandidate{{ID: sb.id, VM: sb.id, Pid: int(sb.hostPid())}}
		_, joined, err := launch.FindJoin(spec, cands)
		return sb, joined, err
	}
	if spec.Annotations[annotationContainerType] != "" {
		return nil, nil, nil // CRI's: its pod's sandbox or none
	}
	byID := map[string]*container{}
	s.mu.Lock()
	for _, c := range s.containers {
		if c.ownsVM() && c.vm != nil && c.vm.podDir != "" && !c.vm.isDead() {
			byID[c.id] = c
			cands = append(cands, launch.JoinCandidate{ID: c.id, VM: c.id, Pid: int(c.hostPid())})
		}
	}
	s.mu.Unlock()
	id, joined, err := launch.FindJoin(spec, cands)
	if id == "" || err != nil {
		return nil, nil, err
	}
	owner := byID[id]
	if err := launch.CheckMember(spec, id, owner.spec.Annotations, owner.vm.size()); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return owner, joined, nil
}

// joinPod makes c a member of sb's VM: its rootfs and bind sources are
// bound below the pod dir (9p resolves them lazily), its guest spec joins
// the sandbox's namespaces, and the agent prepares its mounts. teardown
// undoes it (c.pod.leave).
func (s *service) joinPod(ctx context.Context, c, sb *container, spec *specs.Spec, rootfs string, cfg config.Config, joined []specs.LinuxNamespaceType) error {
	v := sb.vm
	st, err := v.task.State(ctx, &task.StateRequest{ID: sb.id})
	if err != nil {
		return fmt.Errorf("pod sandbox %s: %w", sb.id, fromAgent(err))
	}
	if st.Pid == 0 {
		return fmt.Errorf("pod sandbox %s has no init process in its VM: %w", sb.id, errdefs.ErrFailedPrecondition)
	}
	ns := joinedNamespaces(spec, v.podHostNS, joined, int(sb.hostPid()), st.Pid)
	c.oom = sb.oom
	if err := c.joinVM(ctx, v, spec, rootfs, cfg, ns, false); err != nil {
		return err
	}
	log.G(ctx).Infof("container %s joins pod VM %s (sandbox init guest pid %d)", c.id, v.name, st.Pid)
	return nil
}

// joinVM makes c a member of the running pod VM v (a pod's, or a pool
// VM c claimed, which it then owns): its rootfs and bind sources are
// bound below the pod dir, its guest spec joins the namespaces in ns,
// and the agent prepares its mounts.
func (c *container) joinVM(ctx context.Context, v *vm, spec *specs.Spec, rootfs string, cfg config.Config, ns map[specs.LinuxNamespaceType]string, owned bool) error {
	m := &podMember{vm: v, dir: filepath.Join(v.podDir, c.id), stageDir: filepath.Join(v.stateDir, "staged", c.id), owned: owned,
		scratch: filepath.Join(c.bundle, "shifted")}
	if c.rootfsShifted {
		m.shifted = rootfs
	}
	c.vm, c.pod = v, m
	if owned {
		// The host side of a network namespace the spec names is the
		// claim's (the VM's taps moved there); the guest makes its own.
		spec = withoutNetNSPath(spec)
	}
	mem, err := launch.PrepareMember(launch.MemberRequest{
		ID: c.id, Spec: spec, Bundle: c.bundle, Rootfs: rootfs,
		StageDir: m.stageDir, GuestDir: "/run/msb/c/" + c.id,
		SandboxNamespaces: ns, Config: cfg,
	})
	if err != nil {
		return err
	}
	m.member, m.guest = mem, mem.GuestSpec
	if err := m.expose(mem); err != nil {
		return err
	}
	// A pool VM may have been parked for long: its clock is stepped to
	// the host's before the container sees it.
	if err := v.agent.SetClock(ctx, time.Now()); err != nil {
		log.G(ctx).WithError(err).Warnf("VM %s: guest clock not set", v.name)
	}
	if err := v.agent.Prepare(ctx, c.id, mem.Env); err != nil {
		if status.Code(err) == codes.Unimplemented {
			// Not ErrNotImplemented: containerd takes an Unimplemented
			// Create for a shim without task API v3.
			return fmt.Errorf("pod VM %s: its guest agent cannot prepare another container (guest image older than pod VMs): rebuild the guest image: %w", v.name, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("prepare %s in pod VM %s: %w", c.id, v.name, fromAgent(err))
	}
	return nil
}

// expose binds the member's shares below the pod dir (launch.PodBinds),
// unless the pod VM is going (its state dir is about to be removed).
func (m *podMember) expose(mem *launch.Member) error {
	m.vm.podMu.Lock()
	defer m.vm.podMu.Unlock()
	if m.vm.podClosed {
		return fmt.Errorf("pod VM %s is stopping: %w", m.vm.name, errdefs.ErrFailedPrecondition)
	}
	b, err := launch.OpenPodBinds(m.vm.podDir, m.vm.h.Pid)
	if err != nil {
		return fmt.Errorf("pod VM %s: %w", m.vm.name, err)
	}
	defer b.Close()
	m.mirrors, err = b.Expose(m.id(), mem.Shares, m.shifted, m.scratch, log.L.WithField("container", m.id()).Warnf)
	return err
}

// jailIDs are the first host id v's jailed qemu's user namespace maps and
// the host ids it keeps (a container user namespace's, mounts.JailMap),
// to which its members' rootfs are shifted: the ids its sandbox took for
// it, else those qemu's namespace names (the VMM took them: a pool VM, or
// a sandbox whose rootfs was not shifted); 0 and nil when qemu has none.
func (v *vm) jailIDs() (uint32, *mounts.KeptIDs) {
	if v.jailIDBase != 0 {
		return v.jailIDBase, v.launch.JailKeptIDs
	}
	j, err := jail.OpenNS(v.h.Pid)
	if err != nil || j == nil {
		return 0, nil
	}
	defer j.Close()
	return j.IDBase, j.Kept
}

// id is the member's directory name in the pod dir.
func (m *podMember) id() string { return filepath.Base(m.dir) }

// leave removes what joinPod made on the host; the VM keeps running. The
// guest side goes with the container's delete in the agent.
func (m *podMember) leave(ctx context.Context) {
	for _, mi := range m.mirrors {
		mi.Stop()
	}
	m.mirrors = nil
	b, err := launch.OpenPodBinds(m.vm.podDir, m.vm.h.Pid)
	if err != nil {
		// The VM is gone, and its jail's mounts with it.
		log.G(ctx).WithError(err).Debugf("pod member %s", m.dir)
		b = launch.HostPodBinds(m.vm.podDir)
	}
	var tags []string
	if m.member != nil {
		for _, sh := range m.member.Shares {
			tags = append(tags, sh.Tag)
		}
	}
	if err := b.Withdraw(m.id(), tags, log.G(ctx).Warnf); err != nil {
		log.G(ctx).WithError(err).Errorf("pod member %s: keeping it for the VM's teardown", m.dir)
	}
	b.Close()
	if err := os.Remove(m.scratch); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warnf("remove %s", m.scratch)
	}
	if err := m.member.Release(); err != nil {
		log.G(ctx).WithError(err).Warn("release staged files")
	}
	if err := mounts.RemoveAllUnmounted(m.stageDir); err != nil {
		log.G(ctx).WithError(err).Warnf("remove %s", m.stageDir)
	}
}

// withoutNetNSPath is spec with its network namespace's path dropped
// (spec itself when it names none).
func withoutNetNSPath(spec *specs.Spec) *specs.Spec {
	if spec.Linux == nil {
		return spec
	}
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace && ns.Path != "" {
			cp, l := *spec, *spec.Linux
			l.Namespaces = slices.Clone(l.Namespaces)
			l.Namespaces[i].Path = ""
			cp.Linux = &l
			return &cp
		}
	}
	return spec
}
