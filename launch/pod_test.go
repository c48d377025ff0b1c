package launch

import (
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
)

// shapeSpec is the smallest spec a VM runs, with rootfs as its root.
func shapeSpec(rootfs string) *specs.Spec {
	return &specs.Spec{
		Root:    &specs.Root{Path: rootfs},
		Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace},
			{Type: specs.UTSNamespace}, {Type: specs.NetworkNamespace}}},
	}
}

// TestShapeOf: the shape a pool claim is decided on follows the spec's
// limits, annotations, network namespace and VM-wide boot settings.
func TestShapeOf(t *testing.T) {
	rootfs := t.TempDir()
	cfg := config.Default()
	cfg.EnableAnnotations = []string{`io\.msb\.(vcpus|handoff-init)`}
	base := func() *specs.Spec { return shapeSpec(rootfs) }
	def, err := ShapeOf(base(), rootfs, rootfs, "c", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if def.VCPUs != cfg.VCPUs || def.MemoryMiB != cfg.MemoryMiB || def.NetNS != "" || def.Boot != "" || def.Disks != 0 {
		t.Fatalf("default spec: %+v", def)
	}
	limit := int64(512 << 20)
	quota, period := int64(400000), uint64(100000)
	for name, c := range map[string]struct {
		edit func(*specs.Spec)
		ok   func(Shape) bool
	}{
		"memory limit": {func(s *specs.Spec) {
			s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
		},
			func(sh Shape) bool { return sh.MemoryMiB != def.MemoryMiB }},
		"size annotation": {func(s *specs.Spec) {
			s.Linux.Resources = &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}}
			s.Annotations = map[string]string{"io.msb.vcpus": "2"}
		},
			func(sh Shape) bool { return sh.VCPUs == 2 }},
		"given netns": {func(s *specs.Spec) { s.Linux.Namespaces[3].Path = "/var/run/netns/x" },
			func(sh Shape) bool { return sh.NetNS == "/var/run/netns/x" }},
		"handoff init": {func(s *specs.Spec) { s.Annotations = map[string]string{"io.msb.handoff-init": "/sbin/init"} },
			func(sh Shape) bool { return strings.Contains(sh.Boot, "handoff") }},
		"hostname without uts": {func(s *specs.Spec) {
			s.Hostname = "h"
			s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == specs.UTSNamespace })
		},
			func(sh Shape) bool { return strings.Contains(sh.Boot, "hostname") }},
		"hostname with uts": {func(s *specs.Spec) { s.Hostname = "h" },
			func(sh Shape) bool { return sh == def }},
	} {
		s := base()
		c.edit(s)
		sh, err := ShapeOf(s, rootfs, rootfs, "c", cfg)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !c.ok(sh) {
			t.Errorf("%s: shape %+v", name, sh)
		}
	}
}

// TestAnnotationsOffByDefault: with the built-in configuration a spec may
// set no io.msb.* annotation, the sizing ones included: the admin opts in.
func TestAnnotationsOffByDefault(t *testing.T) {
	rootfs := t.TempDir()
	for _, key := range []string{"io.msb.vcpus", "io.msb.memory-mib", "io.msb.backend", "io.msb.handoff-init"} {
		s := shapeSpec(rootfs)
		s.Annotations = map[string]string{key: "1"}
		_, err := ShapeOf(s, rootfs, rootfs, "c", config.Default())
		if err == nil || !strings.Contains(err.Error(), `annotations["`+key+`"]: not enabled`) || !strings.Contains(err.Error(), "enable_annotations") {
			t.Errorf("%s with the default config: %v, want it refused naming enable_annotations", key, err)
		}
	}
}
