package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/msb-dev/msb/bench/internal/benchenv"
	"github.com/msb-dev/msb/config"
)

// warmPool times msb with a pool of one booted VM: the runs name a
// runtime config with pool_size = 1 (containerd's runtime options), and
// each waits until the pool is full again, so every warm run claims a
// parked VM and no refill overlaps another runtime's run. With template =
// true instead (ADR 025) nothing is parked: each run starts its VM from
// the saved template, and waits for the template's holder.
type warmPool struct {
	e        *benchenv.Env
	cfg      []byte
	cfgPath  string
	poolRoot string
	// ready is the glob below poolRoot that shows the pool ready.
	ready string
}

// warmMode is a warm start to time: the config line and what shows it
// ready.
type warmMode struct{ key, line, ready, label string }

var (
	modePool     = warmMode{"msb-warm", "pool_size = 1", "ready/*.json", "io.containerd.msb.v2 warm (pool_size = 1)"}
	modeTemplate = warmMode{"msb-template", "template = true", "template.sock", "io.containerd.msb.v2 template (no VM parked)"}
)

func newWarmPool(ctx context.Context, e *benchenv.Env, m warmMode) (*warmPool, error) {
	path := os.Getenv("MSB_CONFIG")
	if path == "" {
		path = config.DefaultPath
	}
	base, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	w := &warmPool{e: e, cfg: append(base, []byte("\n"+m.line+"\n")...),
		cfgPath: filepath.Join(e.Dir, m.key+".toml"), poolRoot: filepath.Join(e.StateRoot, "pool-"+m.key), ready: m.ready}
	if err := os.WriteFile(w.cfgPath, w.cfg, 0o644); err != nil {
		return nil, err
	}
	if err := w.pool(ctx, "fill"); err != nil {
		return nil, err
	}
	fmt.Printf("%-24s %s (%s, pool %s)\n", m.key+" config", w.cfgPath, m.line, w.poolRoot)
	return w, nil
}

// pool runs msb-runtime pool SUB on the shim's pool, as the shim does.
func (w *warmPool) pool(ctx context.Context, sub string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(w.e.Bin, "msb-runtime"), "--config", "-", "pool", sub, "--pool-root", w.poolRoot)
	cmd.Stdin = bytes.NewReader(w.cfg)
	cmd.Env = w.e.Environ
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pool %s: %v: %s", sub, err, out)
	}
	return nil
}

// waitFull waits until a VM is parked.
func (w *warmPool) waitFull(ctx context.Context) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if m, _ := filepath.Glob(filepath.Join(w.poolRoot, "*", w.ready)); len(m) > 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			log, _ := os.ReadFile(filepath.Join(w.poolRoot, "fill.log"))
			return fmt.Errorf("the pool was not refilled within 2 minutes; fill.log: %s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// run times one warm `ctr run --rm IMG ID true` in ms.
func (w *warmPool) run(ctx context.Context, img, id string) (float64, error) {
	if err := w.waitFull(ctx); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := w.e.CtrRun(ctx, "run", "--rm", "--runtime", "io.containerd.msb.v2", "--runtime-config-path", w.cfgPath, img, id, "true"); err != nil {
		return 0, err
	}
	d := float64(time.Since(start).Microseconds()) / 1000
	return d, w.waitFull(ctx)
}

func (w *warmPool) drain(ctx context.Context) {
	if err := w.pool(context.WithoutCancel(ctx), "drain"); err != nil {
		fmt.Fprintln(os.Stderr, "warm pool:", err)
	}
}
