package agent

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRuntimeFromImage(t *testing.T) {
	dir := t.TempDir()
	if p, err := RuntimeFromImage(filepath.Join(dir, "none")); err != nil || p != DefaultRuncPath {
		t.Errorf("no file: %q, %v; want %s", p, err, DefaultRuncPath)
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
	for _, c := range []struct{ runtime, in, want string }{
		{"/sbin/crun", "1.3.0", crunSpecVersion},
		{"/sbin/crun", "1.2.1", crunSpecVersion},
		{"/sbin/crun", "1.0.2-dev", "1.0.2-dev"},
		{"/sbin/runc", "1.3.0", "1.3.0"},
	} {
		a := &Agent{opts: Options{RuncPath: c.runtime}}
		s := &specs.Spec{Version: c.in}
		changed := a.runtimeSpecVersion(s)
		if s.Version != c.want || changed != (c.in != c.want) {
			t.Errorf("%s, %s: %s (changed %v), want %s", c.runtime, c.in, s.Version, changed, c.want)
		}
	}
}
