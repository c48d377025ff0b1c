package shim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/pelletier/go-toml/v2"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/pool"
	"github.com/msb-dev/msb/vmm"
)

// Warm start (ADR 020): with pool_size > 0, Create claims a booted VM from
// the pool instead of booting one, and every Create has the pool topped
// up again in the background.

// poolRoot is the shim's pool, below its state root.
func poolRoot() string { return filepath.Join(StateRoot(), "pool") }

// poolMisfit says why a container with spec takes a cold start although
// the config keeps a pool; "" when it can claim a pool VM. A pool VM has
// the default size, a new network namespace of its own, no disks and the
// qemu backend, and runs no pod sandbox.
func poolMisfit(spec *specs.Spec, bundle, rootfs, id string, cfg config.Config) string {
	if spec.Annotations[annotationContainerType] == containerTypeSandbox {
		return "a pod sandbox boots its pod's VM"
	}
	sh, err := launch.ShapeOf(spec, bundle, rootfs, id, cfg)
	if err != nil {
		return err.Error() // Create reports it on the cold path
	}
	pv, err := launch.ShapeOf(pool.Spec(rootfs, id), bundle, rootfs, id, cfg)
	if err != nil {
		return "pool VM: " + err.Error()
	}
	switch {
	case sh.NetNS != "":
		return "its network namespace is given (" + sh.NetNS + "); a pool VM's is its own"
	case sh.Disks > 0:
		return "it attaches block devices"
	case sh.Backend == vmm.BackendLibkrun:
		return "backend libkrun"
	case sh.Boot != "":
		return "the VM boots with " + sh.Boot
	case sh.VCPUs != pv.VCPUs || sh.MemoryMiB != pv.MemoryMiB:
		return fmt.Sprintf("its VM size (%d vCPUs, %d MiB) is not the pool's (%d, %d)", sh.VCPUs, sh.MemoryMiB, pv.VCPUs, pv.MemoryMiB)
	}
	return ""
}

// claimVM returns a pool VM for c, adopted and connected, or nil when c
// takes a cold start (no pool, c does not fit, the pool is empty).
func (s *service) claimVM(ctx context.Context, c *container, rootfs string, cfg config.Config, binary string) *vm {
	if cfg.PoolSize == 0 {
		return nil
	}
	if why := poolMisfit(c.spec, c.bundle, rootfs, c.id, cfg); why != "" {
		log.G(ctx).Infof("container %s: cold start: %s", c.id, why)
		return nil
	}
	host, err := launch.HostResources(c.spec, cfg)
	if err != nil {
		log.G(ctx).WithError(err).Infof("container %s: cold start", c.id)
		return nil
	}
	p := pool.Pool{Root: poolRoot(), Binary: binary, Logf: log.G(ctx).Infof}
	e, h, err := p.Claim(cfg, host)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("container %s: pool: cold start", c.id)
		return nil
	}
	if e == nil {
		log.G(ctx).Infof("container %s: the pool is empty: cold start", c.id)
		return nil
	}
	// The VM now stands where the container's would (host cgroup, OOM
	// score); its removal must find that cgroup.
	e.Launch.Host = host
	v := &vm{name: "pool/" + e.ID, stateDir: e.Launch.RuntimeDir, podDir: e.PodDir, launch: e.Launch, h: h, dead: make(chan struct{})}
	go func() {
		<-h.Done()
		close(v.dead)
	}()
	if v.net, err = launch.OpenNet(v.launch, h.Pid); err == nil {
		err = v.connect(ctx)
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
	if cfg.PoolSize == 0 {
		return
	}
	body, err := toml.Marshal(cfg)
	if err != nil {
		log.G(ctx).WithError(err).Warn("pool: encode config")
		return
	}
	if err := os.MkdirAll(poolRoot(), 0o700); err != nil {
		log.G(ctx).WithError(err).Warn("pool root")
		return
	}
	logf, err := os.OpenFile(filepath.Join(poolRoot(), "fill.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		log.G(ctx).WithError(err).Warn("pool: fill log")
		return
	}
	defer logf.Close()
	cmd := exec.Command(binary, "--config", "-", "pool", "fill", "--pool-root", poolRoot())
	cmd.Stdin = bytes.NewReader(body)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		log.G(ctx).WithError(err).Warn("pool: start fill")
		return
	}
	go func() {
		if err := cmd.Wait(); err != nil {
			log.L.WithError(err).Warnf("pool fill failed (log %s)", filepath.Join(poolRoot(), "fill.log"))
		}
	}()
}
