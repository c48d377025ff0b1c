package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/msb-dev/msb/config"
)

// With -template the msb handler's config gets template = true (ADR 025)
// and the template is saved before the first pod, so every pod of the
// pool's size starts from it. The template is the node's, not a pod's:
// its memory (shmem) is printed apart and is in no per-pod figure.

// templateConfig writes the handler's config ($MSB_CONFIG or the default)
// plus template = true into dir and returns its path.
func templateConfig(dir string) (string, error) {
	base := os.Getenv("MSB_CONFIG")
	if base == "" {
		base = config.DefaultPath
	}
	b, err := os.ReadFile(base)
	if err != nil && !os.IsNotExist(err) {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "template.toml")
	return p, os.WriteFile(p, append(b, []byte("\ntemplate = true\n")...), 0o644)
}

// fillTemplate saves the template for the node's shim (its pool root) and
// prints what it holds.
func fillTemplate(ctx context.Context, n *node, bin, cfg string) error {
	runtime := "msb-runtime"
	if bin != "" {
		runtime = filepath.Join(bin, "msb-runtime")
	}
	before := meminfo("Shmem")
	cmd := exec.CommandContext(ctx, runtime, "--config", cfg, "pool", "fill", "--pool-root", filepath.Join(n.stateMsb, "pool"))
	cmd.Env = append(os.Environ(), "MSB_CONFIG="+cfg) // which overrides --config
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("template: pool fill: %v: %s", err, out)
	}
	fmt.Printf("template saved for the node: %.1f MiB of shmem held (guest RAM touched at the save, once per node, in no per-pod figure)\n",
		float64(meminfo("Shmem")-before)/1024)
	return nil
}
