// Package hooks runs OCI hooks on the host with runc's semantics
// (runtime-spec config.md, "POSIX-platform Hooks"): each hook's path with
// its args and exactly its env, the container state as JSON on stdin, its
// timeout enforced; the first failure stops the list.
package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Phases, named as in the spec's hooks object.
const (
	Prestart      = "prestart"
	CreateRuntime = "createRuntime"
	Poststart     = "poststart"
	Poststop      = "poststop"
)

// List returns the hooks of phase in spec (nil when it has none).
func List(spec *specs.Spec, phase string) []specs.Hook {
	if spec == nil || spec.Hooks == nil {
		return nil
	}
	switch phase {
	case Prestart:
		return spec.Hooks.Prestart //nolint:staticcheck // deprecated in the spec, still run by runc
	case CreateRuntime:
		return spec.Hooks.CreateRuntime
	case Poststart:
		return spec.Hooks.Poststart
	case Poststop:
		return spec.Hooks.Poststop
	}
	return nil
}

// State is the state hooks get on stdin for container id.
func State(spec *specs.Spec, id, bundle string, status specs.ContainerState, pid int) specs.State {
	return specs.State{
		Version:     specs.Version,
		ID:          id,
		Status:      status,
		Pid:         pid,
		Bundle:      bundle,
		Annotations: spec.Annotations,
	}
}

// Create runs the hooks of the create phases, prestart then
// createRuntime, as runc does during create.
func Create(ctx context.Context, spec *specs.Spec, st specs.State) error {
	for _, phase := range []string{Prestart, CreateRuntime} {
		if err := Run(ctx, spec, phase, st); err != nil {
			return err
		}
	}
	return nil
}

// Run runs spec's hooks of phase in order with st on stdin. The error
// names the hook and carries its output.
func Run(ctx context.Context, spec *specs.Spec, phase string, st specs.State) error {
	hs := List(spec, phase)
	if len(hs) == 0 {
		return nil
	}
	in, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("hooks.%s: encode state: %w", phase, err)
	}
	for i, h := range hs {
		if err := run(ctx, h, in); err != nil {
			return fmt.Errorf("hooks.%s[%d] %q: %w", phase, i, h.Path, err)
		}
	}
	return nil
}

func run(ctx context.Context, h specs.Hook, state []byte) error {
	if h.Timeout != nil {
		if *h.Timeout <= 0 {
			return fmt.Errorf("timeout %d: must be a positive number of seconds", *h.Timeout)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*h.Timeout)*time.Second)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, h.Path)
	if len(h.Args) > 0 {
		cmd.Args = h.Args
	}
	cmd.Env = h.Env
	if cmd.Env == nil {
		cmd.Env = []string{} // exactly the hook's env, never ours
	}
	cmd.Stdin = bytes.NewReader(state)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A hook's children that keep the output pipe open must not hold us
	// past the kill.
	cmd.WaitDelay = time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && h.Timeout != nil {
		err = fmt.Errorf("timed out after %ds (killed)", *h.Timeout)
	}
	if o := strings.TrimSpace(out.String()); o != "" {
		return fmt.Errorf("%w: %s", err, truncate(o, 4096))
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
