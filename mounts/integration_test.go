package mounts_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/mounts/bootenv"
	"github.com/msb-dev/msb/specconv"
)

// TestClassifyConvertPrepare runs the host pipeline end to end on a real
// bundle: Classify, specconv.Convert, Prepare, and the boot env round trip.
func TestClassifyConvertPrepare(t *testing.T) {
	tmp, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(tmp, "bundle")
	for _, d := range []string{"rootfs", "data"} {
		if err := os.MkdirAll(filepath.Join(bundle, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, size := range map[string]int{"hosts": 10, "disk.qcow2": 4096} {
		if err := os.WriteFile(filepath.Join(bundle, name), make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec := &specs.Spec{
		Process: &specs.Process{Args: []string{"/bin/true"}},
		Root:    &specs.Root{Path: "rootfs"},
		Linux:   &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.NetworkNamespace}}},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev/shm", Type: "tmpfs", Options: []string{"nosuid", "size=64m"}},
			{Destination: "/data", Type: "bind", Source: "data", Options: []string{"rbind", "ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: "hosts", Options: []string{"rbind"}},
			{Destination: "/vol", Type: mounts.BlockType, Source: "disk.qcow2"},
		},
	}
	ms, err := mounts.Classify(spec.Mounts, bundle)
	if err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(tmp, "state", "stage")
	sb, err := specconv.Convert(specconv.Input{
		Spec: spec, Mounts: ms, RootfsHostPath: filepath.Join(bundle, "rootfs"), StageDir: stage, ContainerID: "c1",
		Defaults: specconv.Defaults{VCPUs: 1, MemoryMiB: 256, OverheadMiB: 128, Backend: "auto"},
	})
	if err != nil {
		t.Fatal(err)
	}
	release, err := mounts.Prepare(sb.Files, sb.Disks)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sb.Shares {
		if fi, err := os.Stat(s.HostPath); err != nil || !fi.IsDir() {
			t.Errorf("share %s: %v", s.HostPath, err)
		}
	}
	f := sb.Files[0]
	if b, err := os.ReadFile(filepath.Join(f.Dir, f.Name)); err != nil || len(b) != 10 {
		t.Errorf("staged file: %v", err)
	}
	if sb.Disks[0].Format != "qcow2" {
		t.Errorf("disk format %q", sb.Disks[0].Format)
	}
	env, err := sb.Boot.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := bootenv.Parse(append([]string{"PATH=/bin"}, env...))
	if err != nil || !reflect.DeepEqual(back, sb.Boot) {
		t.Fatalf("boot env round trip: %v\n%+v\n%+v", err, back, sb.Boot)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(tmp, "state")); !os.IsNotExist(err) {
		t.Fatalf("state left after release: %v", err)
	}
}
