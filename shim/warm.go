package shim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/pelletier/go-toml/v2"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/network"
	"github.com/msb-dev/msb/pool"
	"github.com/msb-dev/msb/vmm"
)

// Warm start (ADR 020): with pool_size > 0, Create claims a booted VM from
// the pool instead of booting one, and every Create has the pool topped
// up again in the background.

// poolMisfit says why a container with spec takes a cold start although
// the config keeps a pool; "" when it can claim a pool VM, with the shape
// of the VM it needs (its network namespace, "" for a new one; its
// memory). A pool VM has the default size, spare_nics NICs, no disks and
// the qemu backend; a container whose VM is smaller takes one too, shrunk
// by the balloon at the claim, which leaves it at least the headroom a VM
// booted for it would have (ADR 031: the factor times a larger size).
func poolMisfit(spec *specs.Spec, bundle, rootfs, id string, cfg config.Config) (string, launch.Shape) {
	sh, err := launch.ShapeOf(spec, bundle, rootfs, id, cfg)
	if err != nil {
		return err.Error(), sh // Create reports it on the cold path
	}
	pv, err := launch.ShapeOf(pool.Spec(rootfs, id), bundle, rootfs, id, cfg)
	if err != nil {
		return "pool VM: " + err.Error(), sh
	}
	if sh.NetNS != "" {
		// The VM's spare NICs take the namespace's interfaces (CNI's
		// eth0), as a cold VM's would take Docker's veth.
		nics, err := network.Plan(sh.NetNS, 0)
		if err != nil {
			return err.Error(), sh
		}
		if len(nics) > cfg.SpareNICs {
			return fmt.Sprintf("its network namespace has %d interfaces, a pool VM %d NICs (spare_nics)", len(nics), cfg.SpareNICs), sh
		}
	}
	switch {
	case sh.Disks > 0:
		return "it attaches block devices", sh
	case sh.Backend == vmm.BackendLibkrun:
		return "backend libkrun", sh
	case sh.Boot != "":
		return "the VM boots with " + sh.Boot, sh
	case sh.VCPUs != pv.VCPUs || sh.MemoryMiB > pv.MemoryMiB:
		return fmt.Sprintf("its VM size (%d vCPUs, %d MiB) does not fit the pool's (%d vCPUs, at most %d MiB)", sh.VCPUs, sh.MemoryMiB, pv.VCPUs, pv.MemoryMiB), sh
	}
	return "", sh
}

// claimVM returns a pool VM for c, adopted and connected, or nil when c
// takes a cold start (no pool, c does not fit, the pool is empty).
func (s *service) claimVM(ctx context.Context, c *container, rootfs string, cfg config.Config, binary string) *vm {
	if !cfg.WarmStart() {
		return nil
	}
	why, shape := poolMisfit(c.spec, c.bundle, rootfs, c.id, cfg)
	netns := shape.NetNS
	if why != "" {
		log.G(ctx).Infof("container %s: cold start: %s", c.id, why)
		return nil
	}
	host, err := launch.HostResources(c.spec, cfg)
	if err != nil {
		log.G(ctx).WithError(err).Infof("container %s: cold start", c.id)
		return nil
	}
	p := pool.Pool{Root: config.PoolRoot(), Binary: binary, Logf: log.G(ctx).Infof}
	claim := vmm.Claim{Host: host, NetNS: netns}
	e, h, err := p.Claim(cfg, claim)
	if err == nil && e == nil && cfg.Template {
		// No VM parked: one from the template, now (ADR 025).
		e, h, err = p.StartFromTemplate(ctx, cfg, claim)
	}
	if err != nil {
		log.G(ctx).WithError(err).Warnf("container %s: pool: cold start", c.id)
		return nil
	}
	if e == nil {
		log.G(ctx).Infof("container %s: no VM parked and no template yet: cold start", c.id)
		return nil
	}
	// The VM now stands where the container's would (host cgroup, OOM
	// score); its removal must find that cgroup.
	e.Launch.Host = host
	v := &vm{name: "pool/" + e.ID, stateDir: e.Launch.RuntimeDir, podDir: e.PodDir(), launch: e.Launch, overheadMiB: cfg.OverheadMiB, h: h, dead: make(chan struct{})}
	v.jailIDBase, _ = v.jailIDs() // the claimer's rootfs is shifted to them (a pool VM keeps no ids)
	go func() {
		<-h.Done()
		close(v.dead)
	}()
	v.claimNetNS = fmt.Sprintf("/proc/%d/ns/net", h.Pid)
	if netns != "" {
		if err = v.moveTo(netns); err == nil {
			v.claimNetNS = netns
		}
	}
	if err == nil {
		v.net, err = launch.OpenNet(v.launch, h.Pid)
	}
	if err == nil {
		err = v.connect(ctx)
	}
	if err == nil && shape.MemoryMiB != v.launch.MemoryMiB {
		// A smaller VM: the balloon takes the rest, the host cgroup
		// follows (ADR 031).
		var st vmm.MemoryState
		if st, err = vmm.SetMemory(ctx, v.launch.AgentSocket, shape.MemoryMiB); err == nil {
			v.memoryMiB.Store(int64(st.TargetMiB))
		}
	}
	if err != nil {
		log.G(ctx).WithError(err).Warnf("container %s: pool VM %s: cold start", c.id, e.ID)
		v.destroy(ctx)
		return nil
	}
	log.G(ctx).Infof("container %s claims pool VM %s (VMM pid %d)", c.id, e.ID, h.Pid)
	return v
}

// refillPool tops the pool up in the background: msb-runtime pool fill,
// in its own session, with the shim's config on stdin (it may come from
// containerd's runtime options rather than a file). The VMs it boots
// outlive it and this shim.
func refillPool(ctx context.Context, cfg config.Config, binary string) {
	if !cfg.WarmStart() {
		return
	}
	body, err := toml.Marshal(cfg)
	if err != nil {
		log.G(ctx).WithError(err).Warn("pool: encode config")
		return
	}
	if err := os.MkdirAll(config.PoolRoot(), 0o700); err != nil {
		log.G(ctx).WithError(err).Warn("pool root")
		return
	}
	logf, err := os.OpenFile(filepath.Join(config.PoolRoot(), "fill.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		log.G(ctx).WithError(err).Warn("pool: fill log")
		return
	}
	defer logf.Close()
	cmd := exec.Command(binary, "--config", "-", "pool", "fill", "--pool-root", config.PoolRoot())
	cmd.Stdin = bytes.NewReader(body)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		log.G(ctx).WithError(err).Warn("pool: start fill")
		return
	}
	go func() {
		if err := cmd.Wait(); err != nil {
			log.L.WithError(err).Warnf("pool fill failed (log %s)", filepath.Join(config.PoolRoot(), "fill.log"))
		}
	}()
}

// moveTo hands a claimed pool VM to the network namespace netns the
// container names: its taps move there (the VM's spare NICs then take
// the namespace's interfaces at Start, as a cold VM's take Docker's
// veth).
func (v *vm) moveTo(netns string) error {
	from, err := network.OpenNS(fmt.Sprintf("/proc/%d/ns/net", v.h.Pid))
	if err != nil {
		return err
	}
	defer from.Close()
	to, err := network.OpenNS(netns)
	if err != nil {
		return err
	}
	defer to.Close()
	if err := network.MoveTaps(from, to, v.launch.NICs); err != nil {
		return err
	}
	v.launch.NetNS = netns
	return nil
}

// anchor is the task pid of a container that claimed a pool VM (ADR
// 020): no pid the shim reports may point a client at another namespace
// than the container's, and the VMM stays in the network namespace it was
// booted in and in the host's mount namespace (a pool VM's main thread
// never moves into a view, view/view.go). It is msb-runtime's anchor
// command started in the container's network namespace, its main thread
// in the container's view (rootfs), and lives until the shim closes its
// stdin, or dies.
type anchor struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	once sync.Once
}

func startAnchor(binary, netns, rootfs string) (*anchor, error) {
	cmd := exec.Command(binary, "anchor", rootfs)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := network.InNS(netns, cmd.Start); err != nil {
		in.Close()
		return nil, fmt.Errorf("anchor process in %s: %w", netns, err)
	}
	return &anchor{cmd: cmd, in: in}, nil
}

// stop ends the anchor (closing its stdin; SIGKILL after 5 s) and reaps
// it, once.
func (a *anchor) stop() {
	if a == nil {
		return
	}
	a.once.Do(a.end)
}

func (a *anchor) end() {
	a.in.Close()
	done := make(chan struct{})
	go func() {
		_ = a.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
}
