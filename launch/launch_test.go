package launch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
)

func writeSpec(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadSpecErrors(t *testing.T) {
	for name, c := range map[string]struct{ body, want string }{
		"syntax":  {"{\n \"ociVersion\": \"1.0.2\",\n \"process\": {\n", "line 4"},
		"type":    {`{"process":{"args":"sh"},"root":{"path":"rootfs"}}`, "field process.args"},
		"no-root": {`{"process":{"args":["sh"]}}`, "root.path is missing"},
		"no-args": {`{"process":{"args":[]},"root":{"path":"rootfs"}}`, "process.args is empty"},
	} {
		_, err := LoadSpec(writeSpec(t, c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "config.json") || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want it to name config.json and %q as invalid argument", name, err, c.want)
		}
	}
	if _, err := LoadSpec(t.TempDir()); err == nil || errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("missing config.json: %v", err)
	}
}

func TestPrepare(t *testing.T) {
	dir := t.TempDir()
	rootfs, share, state := filepath.Join(dir, "rootfs"), filepath.Join(dir, "share"), filepath.Join(dir, "state")
	for _, d := range []string{rootfs, share, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	kernel := filepath.Join(dir, "vmlinux")
	_ = os.WriteFile(kernel, []byte("k"), 0o644)
	cfg := config.Default()
	cfg.Kernel, cfg.GuestRoot, cfg.Libkrun = kernel, "/krunroot", "/lib/libkrun.so.1"
	spec := &specs.Spec{
		Root:     &specs.Root{Path: "rootfs"},
		Process:  &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Hostname: "h",
		Mounts:   []specs.Mount{{Destination: "/data", Type: "bind", Source: share, Options: []string{"rbind", "ro"}}},
		Linux:    &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.NetworkNamespace}}},
	}
	p, err := Prepare(Request{ID: "c1", Spec: spec, Bundle: dir, Rootfs: rootfs, StateDir: state, AgentSocket: "/run/x.sock", Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	lc := p.Launch
	if lc.Name != "c1" || lc.GuestRoot != "/krunroot" || lc.Libkrun != "/lib/libkrun.so.1" || lc.Kernel != kernel ||
		lc.RuntimeDir != state || lc.Cleanup[0] != state || len(lc.Shares) != 2 || !lc.Shares[1].ReadOnly || lc.Shares[1].Path != share {
		t.Fatalf("launch config: %+v", lc)
	}
	if err := lc.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.GuestSpec.Mounts[0].Source == share || !strings.HasPrefix(p.GuestSpec.Root.Path, "/run/msb/") {
		t.Fatalf("guest spec keeps host paths: %+v %+v", p.GuestSpec.Root, p.GuestSpec.Mounts)
	}
	if p.VMMLog() != filepath.Join(state, "vmm.log") {
		t.Fatal(p.VMMLog())
	}
	for _, s := range lc.Shares {
		if s.MultiDevs {
			t.Errorf("share %s of a lone container spans mounts: %+v", s.Tag, s)
		}
	}

	if lc.Initrd != cfg.Initrd || lc.RootDisk != "" {
		t.Fatalf("image without a root disk: initrd %q, root disk %q", lc.Initrd, lc.RootDisk)
	}

	// An image with a root disk (msb's own kernel) boots from it, not from
	// the configured initramfs.
	rootDisk := filepath.Join(dir, RootDiskFile)
	_ = os.WriteFile(rootDisk, []byte("ext4"), 0o644)
	p2, err := Prepare(Request{ID: "c4", Spec: spec, Bundle: dir, Rootfs: rootfs, StateDir: state, AgentSocket: "/run/z.sock", Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Release()
	if lc := p2.Launch; lc.RootDisk != rootDisk || lc.Initrd != "" {
		t.Fatalf("image with a root disk: initrd %q, root disk %q", lc.Initrd, lc.RootDisk)
	}

	// A refused spec is an invalid argument and reserves nothing.
	spec.Linux.Namespaces = nil
	if _, err := Prepare(Request{ID: "c2", Spec: spec, Bundle: dir, Rootfs: rootfs, StateDir: state, Config: cfg}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("host network: %v", err)
	}
	cfg.Kernel = filepath.Join(dir, "missing")
	spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.NetworkNamespace}}
	if _, err := Prepare(Request{ID: "c3", Spec: spec, Bundle: dir, Rootfs: rootfs, StateDir: state, AgentSocket: "/run/y.sock", Config: cfg}); err == nil || !strings.Contains(err.Error(), "install.sh") {
		t.Fatalf("missing kernel: %v", err)
	}
}

func TestPreparePodShareSpansMounts(t *testing.T) {
	dir := t.TempDir()
	rootfs, state, pod := filepath.Join(dir, "rootfs"), filepath.Join(dir, "state"), filepath.Join(dir, "pod")
	for _, d := range []string{rootfs, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	kernel := filepath.Join(dir, "vmlinux")
	_ = os.WriteFile(kernel, []byte("k"), 0o644)
	cfg := config.Default()
	cfg.Kernel = kernel
	spec := &specs.Spec{
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Linux:   &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.NetworkNamespace}}},
	}
	p, err := Prepare(Request{ID: "c1", Spec: spec, Bundle: dir, Rootfs: rootfs, StateDir: state, AgentSocket: "/run/x.sock", Config: cfg, PodDir: pod})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	var podShares int
	for _, s := range p.Launch.Shares {
		if s.Path == pod {
			podShares++
			if !s.MultiDevs {
				t.Errorf("pod share %+v: MultiDevs not set", s)
			}
		} else if s.MultiDevs {
			t.Errorf("share %+v: MultiDevs set", s)
		}
	}
	if podShares != 1 {
		t.Fatalf("%d pod shares in %+v", podShares, p.Launch.Shares)
	}
}

func TestModulesDirBesideKernel(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if got := besideKernel(kernel, ModulesDir, true); got != "" {
		t.Errorf("image without modules/: %q, want none", got)
	}
	if got := besideKernel("", ModulesDir, true); got != "" {
		t.Errorf("no kernel: %q", got)
	}
	if err := os.WriteFile(filepath.Join(dir, ModulesDir), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := besideKernel(kernel, ModulesDir, true); got != "" {
		t.Errorf("modules is a file: %q, want none", got)
	}
	os.Remove(filepath.Join(dir, ModulesDir))
	if err := os.Mkdir(filepath.Join(dir, ModulesDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, want := besideKernel(kernel, ModulesDir, true), filepath.Join(dir, ModulesDir); got != want {
		t.Errorf("besideKernel = %q, want %q", got, want)
	}
}

// TestJailIDs: how a jailed qemu holds a container user namespace's ids
// (ADR 022): kept beside its range; a namespace of the host's ids where
// they hold host root; root of the host's where they reach msb's ranges.
func TestJailIDs(t *testing.T) {
	spec := func(host uint32) *specs.Spec {
		m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: host, Size: 65536}}
		return &specs.Spec{Linux: &specs.Linux{UIDMappings: m, GIDMappings: m}}
	}
	for _, c := range []struct {
		spec              *specs.Spec
		kept              bool
		hostIDs, hostRoot bool
	}{
		{spec: &specs.Spec{Linux: &specs.Linux{}}},
		{spec: spec(100000), kept: true},
		{spec: spec(0), hostIDs: true},
		{spec: spec(1 << 31), hostRoot: true},
	} {
		kept, hostIDs, hostRoot := jailIDs(c.spec)
		if (kept != nil) != c.kept || hostIDs != c.hostIDs || hostRoot != c.hostRoot {
			t.Errorf("jailIDs(%+v) = %v, %v, %v; want kept %v, host ids %v, host root %v", c.spec.Linux.UIDMappings, kept, hostIDs, hostRoot, c.kept, c.hostIDs, c.hostRoot)
		}
		if own := QEMUOwnRange(c.spec); own != !(c.hostIDs || c.hostRoot) {
			t.Errorf("QEMUOwnRange(%+v) = %v", c.spec.Linux.UIDMappings, own)
		}
	}
}
