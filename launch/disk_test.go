package launch

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/config"
)

// TestPrepareRefusesBackingFile: a qcow2 made with
// `qemu-img create -f qcow2 -b base.raw -F raw top.qcow2` is refused, with
// the mount and both fixes named, unless allow_disk_backing_files; a plain
// qcow2 passes, and the launch config tells qemu to open no backing file.
func TestPrepareRefusesBackingFile(t *testing.T) {
	qimg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img not found (apt-get install qemu-utils)")
	}
	dir := t.TempDir()
	rootfs, state := filepath.Join(dir, "rootfs"), filepath.Join(dir, "state")
	for _, d := range []string{rootfs, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "top.qcow2"},
		{"create", "-q", "-f", "qcow2", "plain.qcow2", "1M"},
	} {
		cmd := exec.Command(qimg, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
	kernel := filepath.Join(dir, "vmlinux")
	_ = os.WriteFile(kernel, []byte("k"), 0o644)
	cfg := config.Default()
	cfg.Kernel = kernel
	prepare := func(image string, cfg config.Config) (*Prepared, error) {
		spec := &specs.Spec{
			Root:    &specs.Root{Path: "rootfs"},
			Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
			Mounts:  []specs.Mount{{Destination: "/data", Type: "ext4", Source: image, Options: []string{"rw"}}},
			Linux:   &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.NetworkNamespace}}},
		}
		return Prepare(Request{ID: "c1", Spec: spec, Bundle: dir, Rootfs: rootfs, StateDir: state, AgentSocket: "/run/x.sock", Config: cfg})
	}

	top := filepath.Join(dir, "top.qcow2")
	_, err = prepare("top.qcow2", cfg)
	for _, want := range []string{"mounts[0] /data: disk image " + top + " (qcow2) refers to backing file \"base.raw\"",
		"qemu-img convert -O qcow2 " + top, "allow_disk_backing_files = true"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v\nwant it to contain %q", err, want)
		}
	}
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("err is not an invalid argument: %v", err)
	}

	p, err := prepare("plain.qcow2", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Launch.Disks; len(d) != 1 || d[0].Format != "qcow2" || d[0].Backing {
		t.Fatalf("disks %+v: want one qcow2 without backing", d)
	}
	p.Release()

	cfg.AllowDiskBackingFiles = true
	p, err = prepare("top.qcow2", cfg)
	if err != nil {
		t.Fatalf("allowed backing file: %v", err)
	}
	if d := p.Launch.Disks; len(d) != 1 || !d[0].Backing {
		t.Fatalf("disks %+v: want backing allowed", d)
	}
	p.Release()
}
