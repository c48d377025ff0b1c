package task

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRuntimeFromImage(t *testing.T) {
	dir := t.TempDir()
	if p, err := RuntimeFromImage(filepath.Join(dir, "none")); err != nil || p != DefaultRuntimePath {
		t.Errorf("no file: %q, %v; want %s", p, err, DefaultRuntimePath)
	}
	f := filepath.Join(dir, "oci-runtime")
	for content, want := range map[string]string{"/sbin/crun\n": "/sbin/crun", "/sbin/runc": "/sbin/runc", "crun\n": "", "/a\n/b\n": ""} {
		if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := RuntimeFromImage(f)
		if want == "" && err == nil || want != "" && p != want {
			t.Errorf("%q: %q, %v; want %q", content, p, err, want)
		}
	}
}

// TestRuntimeSpecVersion: crun 1.8 gets a 1.0.x ociVersion, runc the
// shim's.
func TestRuntimeSpecVersion(t *testing.T) {
	runtimeSpecVersion := func(a *Service, s *specs.Spec) bool {
		changed, err := a.runtimeSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		return changed
	}
	for _, c := range []struct{ runtime, in, want string }{
		{"/sbin/crun", "1.3.0", crunSpecVersion},
		{"/sbin/crun", "1.2.1", crunSpecVersion},
		{"/sbin/crun", "1.0.2-dev", "1.0.2-dev"},
		{"/sbin/runc", "1.3.0", "1.3.0"},
	} {
		a := &Service{opts: Options{RuntimePath: c.runtime}}
		s := &specs.Spec{Version: c.in}
		changed := runtimeSpecVersion(a, s)
		if s.Version != c.want || changed != (c.in != c.want) {
			t.Errorf("%s, %s: %s (changed %v), want %s", c.runtime, c.in, s.Version, changed, c.want)
		}
	}
}

// TestRuntimeSpecTimeNamespace: for crun 1.8 a time namespace without
// offsets goes (its child dies making one), one with offsets is refused
// naming the fix; runc keeps both.
func TestRuntimeSpecTimeNamespace(t *testing.T) {
	spec := func(offsets bool) *specs.Spec {
		s := &specs.Spec{Version: "1.0.2", Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.PIDNamespace}, {Type: specs.TimeNamespace}, {Type: specs.NetworkNamespace}}}}
		if offsets {
			s.Linux.TimeOffsets = map[string]specs.LinuxTimeOffset{"monotonic": {Secs: 10}}
		}
		return s
	}
	crun := &Service{opts: Options{RuntimePath: "/sbin/crun"}}
	s := spec(false)
	changed, err := crun.runtimeSpec(s)
	if err != nil || !changed || len(s.Linux.Namespaces) != 2 || s.Linux.Namespaces[1].Type != specs.NetworkNamespace {
		t.Errorf("crun, no offsets: changed %v, %v, namespaces %v", changed, err, s.Linux.Namespaces)
	}
	if _, err := crun.runtimeSpec(spec(true)); err == nil || !strings.Contains(err.Error(), "MSB_GUEST_RUNTIME=runc") {
		t.Errorf("crun, offsets: %v", err)
	}
	runc := &Service{opts: Options{RuntimePath: "/sbin/runc"}}
	s = spec(true)
	if changed, err := runc.runtimeSpec(s); err != nil || changed || len(s.Linux.Namespaces) != 3 {
		t.Errorf("runc: changed %v, %v, namespaces %v", changed, err, s.Linux.Namespaces)
	}
}
