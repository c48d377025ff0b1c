package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/specconv"
	"github.com/msb-dev/msb/vmm"
)

// socketDir holds the sockets of every namespace's VMs, keyed by
// namespace and id (vmm.AgentSocketPath): a containerd namespace can be
// long enough (containerd allows 76 bytes) that no socket path would fit
// below config.ShimStateRoot()/<namespace>. A namespace named sock shares the dir
// with no name: its state dirs are below sock/vms, sockets are hashes.
func socketDir() string { return filepath.Join(config.ShimStateRoot(), "sock") }

// vm is one microVM and the guest agent in it.
type vm struct {
	name     string
	stateDir string
	launch   *vmm.LaunchConfig
	guest    *specs.Spec // the spec runc runs in the guest
	prep     *launch.Prepared
	// podDir is the host pod directory of a pod VM (ADR 007), else "".
	podDir string
	// overheadMiB is the part of launch.MemoryMiB the guest itself needs
	// (overhead_mib when the VM was sized): no container gets it (size).
	overheadMiB int
	// jailIDBase is the host ids its qemu's user namespace maps, which
	// the shim chose (it shifted the rootfs); 0 when not (ADR 022).
	jailIDBase uint32
	// podHostNS are the host namespace paths the sandbox's spec named
	// (takeHostNamespaces): a pod container naming one joins the guest's.
	podHostNS map[specs.LinuxNamespaceType]string
	// podMu orders members' binds below podDir against destroy: once
	// podClosed is set, no bind is added and the state dir can go.
	podMu     sync.Mutex
	podClosed bool

	// resizeMu orders updates of its containers' resources (Update);
	// memoryMiB is its memory as the last one left it (0: as launched).
	resizeMu  sync.Mutex
	memoryMiB atomic.Int64

	h      *vmm.Handle
	client *ttrpc.Client
	task   task.TTRPCTaskService
	agent  *protocol.AgentClient
	// dead is closed once the VMM process has exited; then every call to
	// the agent fails at once (the client is closed).
	dead chan struct{}
	// killed is set when the shim SIGKILLed the VM itself.
	killed atomic.Bool

	// net is the VMM's network namespace (the container's) and what is
	// joined to the VM's NICs; the shim attaches at Start.
	net *launch.Net
	// anchor is the task pid of a claimed pool VM (warm.go); nil
	// otherwise.
	anchor *anchor
	// claimNetNS is a claimed pool VM's container's network namespace,
	// where its anchor runs: the one it names, else the VM's.
	claimNetNS string

	stopOnce sync.Once
	// endOnce logs once why the VM died (ended).
	endOnce sync.Once
}

// vmRequest is what startVM needs to know about a container.
type vmRequest struct {
	id, namespace string
	bundle        string
	rootfs        string // host rootfs directory, mounted
	spec          *specs.Spec
	cfg           config.Config
	binary        string
	podDir        string // makes it a pod VM (launch.Request.PodDir)
	jailIDBase    uint32 // rootfs shifted to these ids (launch.Request.JailIDBase)
}

// startVM prepares the VM for a container (state dir, staged files, disk
// locks), spawns its VMM attached to this process, and waits until the
// guest agent answers. On error nothing it made is left behind and the
// error names the logs.
func startVM(ctx context.Context, r vmRequest, onSpawn func(*vm) error) (_ *vm, retErr error) {
	root := filepath.Join(config.ShimStateRoot(), r.namespace)
	sock, err := vmm.AgentSocketPath(socketDir(), r.namespace+"/"+r.id)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(vmm.StateDirPath(root, r.id)), 0o711); err != nil {
		return nil, fmt.Errorf("state root: %w", err)
	}
	stateDir := vmm.StateDirPath(root, r.id)
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		// Left by a shim that died without cleanup; the id is ours now.
		log.G(ctx).Warnf("removing stale VM state %s", stateDir)
		if err := mounts.RemoveAllUnmounted(stateDir); err != nil {
			return nil, fmt.Errorf("stale state dir: %w", err)
		}
		if err := os.Mkdir(stateDir, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	v := &vm{name: r.id, stateDir: stateDir, podDir: r.podDir, jailIDBase: r.jailIDBase, overheadMiB: r.cfg.OverheadMiB, dead: make(chan struct{})}
	defer func() {
		if retErr != nil {
			v.destroy(ctx)
		}
	}()
	p, err := launch.Prepare(launch.Request{
		ID: r.id, Name: r.namespace + "/" + r.id, Spec: r.spec, Bundle: r.bundle, Rootfs: r.rootfs,
		StateDir: stateDir, AgentSocket: sock, Config: r.cfg, PodDir: r.podDir, JailIDBase: r.jailIDBase,
	})
	if err != nil {
		return nil, err
	}
	v.prep, v.launch, v.guest = p, p.Launch, p.GuestSpec
	if v.h, err = p.Spawn(r.binary); err != nil {
		return nil, err
	}
	go func() {
		<-v.h.Done()
		close(v.dead)
	}()
	if v.net, err = launch.OpenNet(v.launch, v.h.Pid); err != nil {
		return nil, err
	}
	if err := onSpawn(v); err != nil {
		return nil, err
	}
	if err := v.connect(ctx); err != nil {
		return nil, fmt.Errorf("%w%s%s", err, launch.LogTail(v.vmmLog()), launch.LogTail(v.launch.ConsoleLog))
	}
	return v, nil
}

// size is what an update of one of its containers can ask for: its
// memory now (the VMM's answer replaces it, launch.Resize) and headroom.
func (v *vm) size() specconv.VMSize {
	mem := v.launch.MemoryMiB
	if n := v.memoryMiB.Load(); n > 0 {
		mem = int(n)
	}
	return specconv.VMSize{VCPUs: v.launch.VCPUs, MemoryMiB: mem, OverheadMiB: v.overheadMiB, MaxMemoryMiB: v.launch.MaxMemoryMiB}
}

func (v *vm) vmmLog() string { return filepath.Join(v.stateDir, "vmm.log") }

// connect waits until the VM's agent answers (launch.WaitAgent).
func (v *vm) connect(ctx context.Context) error {
	c, err := launch.WaitAgent(ctx, v.launch, v.h)
	if err != nil {
		return err
	}
	v.client = c
	v.task = task.NewTTRPCTaskClient(c)
	v.agent = protocol.NewAgentClient(c)
	go func() {
		// A dead VMM must fail every pending call now, not at a timeout.
		<-v.dead
		c.Close()
	}()
	return nil
}

// ended says why the VM, which died unasked, ended and the exit status
// its processes get (launch.VMEnded). The first call logs one line with
// the cause and the console's last lines.
func (v *vm) ended(ctx context.Context) (int, string) {
	code, err := v.h.Wait()
	status, cause := launch.VMEnded(v.stateDir, code, err)
	if v.killed.Load() {
		status, cause = vmm.ExitKilled, "the shim killed it"
	}
	v.endOnce.Do(func() {
		log.G(ctx).Errorf("VM %s ended: %s: exit status %d (VMM log %s); guest console: %s",
			v.name, cause, status, v.vmmLog(), launch.LastLines(v.launch.ConsoleLog, 5))
	})
	return status, cause
}

// isDead reports whether the VMM process has exited.
func (v *vm) isDead() bool {
	select {
	case <-v.dead:
		return true
	default:
		return false
	}
}

// kill ends the VM at once (SIGKILL to the VMM, whose hypervisor dies with
// it). Used when the agent cannot be reached to deliver a SIGKILL.
func (v *vm) kill() {
	v.killed.Store(true)
	_ = v.h.Kill()
}

// stop powers the VM off (vmm.Handle.Stop): the agent is asked to shut
// down with code, then the VMM, then it is killed. It returns once the
// VMM process is gone.
func (v *vm) stop(ctx context.Context, code int32) {
	v.stopOnce.Do(func() {
		if v.h == nil {
			return
		}
		v.net.StopWatch() // the guest no longer follows the namespace
		var shutdown func() error
		if v.agent != nil {
			shutdown = func() error {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), vmm.StopStep)
				defer cancel()
				err := v.agent.Shutdown(sctx, code)
				if err != nil && !v.isDead() {
					log.G(ctx).WithError(err).Warnf("VM %s: guest shutdown request failed", v.name)
				}
				return err
			}
		}
		if err := v.h.Stop(shutdown); err != nil {
			log.G(ctx).WithError(err).Errorf("VM %s", v.name)
			return
		}
		_, _ = v.h.Wait()
	})
}

// destroy stops the VM and removes everything startVM made.
func (v *vm) destroy(ctx context.Context) {
	v.stop(ctx, vmm.ExitKilled)
	if v.client != nil {
		v.client.Close()
	}
	if err := v.net.Close(); err != nil {
		log.G(ctx).WithError(err).Warnf("VM %s: unwire network", v.name)
	}
	v.anchor.stop()
	// A pool VM has nothing staged (prep is nil); its host cgroup is
	// removed below with every VM's.
	if err := v.prep.Release(); err != nil {
		log.G(ctx).WithError(err).Warnf("VM %s: release staged files and disks", v.name)
	}
	if v.podDir != "" {
		// No member binds below the pod dir from here on (an expose in
		// flight holds podMu until its binds are made).
		v.podMu.Lock()
		v.podClosed = true
		v.podMu.Unlock()
	}
	// Members' binds go before the state dir (the guest's pod dir and
	// shares below it), found by mount ID and never through a symlink;
	// with mounts left, the state dir is kept.
	rec := launch.VMRecord{StateDir: v.stateDir}
	if v.launch != nil {
		rec.AgentSocket = v.launch.AgentSocket
		if v.launch.Host != nil {
			rec.Cgroup = v.launch.Host.Cgroup
		}
	}
	if err := rec.Remove(); err != nil {
		log.G(ctx).WithError(err).Errorf("VM %s: keeping what could not be removed", v.name)
	}
}
