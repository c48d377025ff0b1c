package hooks

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunStateArgsEnv(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	t.Setenv("MSB_HOOK_LEAK", "leaked")
	h := script(t, `echo "$1 $2 FOO=$FOO LEAK=$MSB_HOOK_LEAK" >> "$OUT"; cat >> "$OUT"; echo >> "$OUT"`)
	spec := &specs.Spec{Annotations: map[string]string{"a": "b"}, Hooks: &specs.Hooks{CreateRuntime: []specs.Hook{
		{Path: h, Args: []string{"argv0", "x", "y"}, Env: []string{"FOO=bar", "OUT=" + out}},
		{Path: h, Env: []string{"OUT=" + out}},
	}}}
	st := State(spec, "c1", "/b", specs.StateCreating, 4242)
	if err := Run(context.Background(), spec, CreateRuntime, st); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 4 {
		t.Fatalf("output %q", b)
	}
	// runc passes args as argv (argv[0] is args[0]) and exactly env.
	if lines[0] != "x y FOO=bar LEAK=" {
		t.Errorf("first hook saw %q", lines[0])
	}
	var got specs.State
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil {
		t.Fatalf("state %q: %v", lines[1], err)
	}
	if got.ID != "c1" || got.Pid != 4242 || got.Bundle != "/b" || got.Status != specs.StateCreating || got.Annotations["a"] != "b" || got.Version != specs.Version {
		t.Errorf("state = %+v", got)
	}
	if lines[2] != "  FOO= LEAK=" {
		t.Errorf("second hook saw %q", lines[2])
	}
	if err := Run(context.Background(), spec, Poststart, st); err != nil {
		t.Errorf("no poststart hooks: %v", err)
	}
}

func TestRunFailureStopsList(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	spec := &specs.Spec{Hooks: &specs.Hooks{Prestart: []specs.Hook{
		{Path: script(t, "echo 'cannot set up the network' >&2; exit 1")},
		{Path: script(t, "touch "+marker)},
	}}}
	err := Run(context.Background(), spec, Prestart, specs.State{})
	if err == nil || !strings.Contains(err.Error(), "hooks.prestart[0]") || !strings.Contains(err.Error(), "cannot set up the network") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the hook after a failed one ran")
	}
}

func TestRunTimeout(t *testing.T) {
	one := 1
	spec := &specs.Spec{Hooks: &specs.Hooks{Poststop: []specs.Hook{{Path: script(t, "sleep 30 & sleep 30"), Timeout: &one}}}}
	start := time.Now()
	err := Run(context.Background(), spec, Poststop, specs.State{})
	if err == nil || !strings.Contains(err.Error(), "timed out after 1s") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s", d)
	}
	zero := 0
	spec.Hooks.Poststop[0].Timeout = &zero
	if err := Run(context.Background(), spec, Poststop, specs.State{}); err == nil || !strings.Contains(err.Error(), "positive") {
		t.Errorf("zero timeout: %v", err)
	}
}
