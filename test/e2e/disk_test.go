package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestQcow2Disk mounts an ext4 filesystem in a qcow2 image read-write and
// a qcow2 overlay with a backing file, which is refused before any VM
// boots (ADR 016).
func TestQcow2Disk(t *testing.T) {
	requireVM(t)
	qimg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img not found (apt-get install qemu-utils)")
	}
	dir := t.TempDir()
	content := t.TempDir()
	if err := os.WriteFile(filepath.Join(content, "hello"), []byte("from the qcow2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "fs.raw")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", content, raw, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	for _, args := range [][]string{
		{"convert", "-q", "-O", "qcow2", "fs.raw", "disk.qcow2"},
		{"create", "-q", "-f", "qcow2", "-b", "fs.raw", "-F", "raw", "top.qcow2"},
	} {
		cmd := exec.Command(qimg, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
	withDisk := func(img string) func(*specs.Spec) {
		return func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "ext4", Source: filepath.Join(dir, img), Options: []string{"rw"}})
		}
	}

	r := run(t, bundle(t, []string{"sh", "-c", "cat /data/hello && echo written > /data/new && cat /data/new"}, withDisk("disk.qcow2")), "")
	if r.code != 0 || r.stdout != "from the qcow2\nwritten\n" {
		t.Fatalf("qcow2 disk: exit %d stdout %q; stderr: %s", r.code, r.stdout, r.stderr)
	}

	r = run(t, bundle(t, []string{"cat", "/data/hello"}, withDisk("top.qcow2")), "")
	if r.code == 0 || !strings.Contains(r.stderr, `refers to backing file "fs.raw"`) || !strings.Contains(r.stderr, "allow_disk_backing_files") {
		t.Fatalf("qcow2 with a backing file: exit %d stdout %q; stderr: %s", r.code, r.stdout, r.stderr)
	}
}
