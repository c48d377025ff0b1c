package guest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/msb-dev/msb/launch"
)

// TestRootDisk writes the guest root as an ext4 image and reads it back
// with debugfs (e2fsprogs): contents, modes, the symlink and device nodes.
func TestRootDisk(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mknod of the device nodes needs root")
	}
	debugfs, err := exec.LookPath("debugfs")
	if err != nil {
		t.Skip("debugfs (e2fsprogs) not installed")
	}
	if RootDiskFile != launch.RootDiskFile {
		t.Fatalf("guest.RootDiskFile %q, launch.RootDiskFile %q: launch looks for the other name", RootDiskFile, launch.RootDiskFile)
	}
	out := t.TempDir()
	entries := rootEntries("6.1.0-test-msb", []byte("AGENT-BYTES"), runtimeEntries(RuntimeRunc, []byte("RUNC-BYTES")), nil, "")
	size, err := writeRootDisk(context.Background(), entries, t.TempDir(), out)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(out, RootDiskFile)
	st, err := os.Stat(img)
	if err != nil || st.Size() != size || st.Mode().Perm() != 0o644 {
		t.Fatalf("root disk: %v, size %d (want %d)", err, st.Size(), size)
	}
	run := func(req string) string {
		b, err := exec.Command(debugfs, "-R", req, img).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs -R %q: %v\n%s", req, err, b)
		}
		return string(b)
	}
	for path, want := range map[string]string{"/init": "AGENT-BYTES", "/sbin/runc": "RUNC-BYTES", "/etc/msb/oci-runtime": "/sbin/runc\n", "/etc/msb/kernel-release": "6.1.0-test-msb\n"} {
		if got := run("cat " + path); !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
	for req, want := range map[string]string{
		"stat /init":          "Mode:  0755",
		"stat /tmp":           "Mode:  01777",
		"stat /dev/console":   "Device major/minor number: 05:01",
		"stat /sbin/modprobe": `Fast link dest: "/init"`,
		"stat /lib/modules/6.1.0-test-msb/modules.dep": "Size: 0",
	} {
		if got := run(req); !strings.Contains(got, want) {
			t.Errorf("debugfs %s: lacks %q:\n%s", req, want, got)
		}
	}
	if got := run("stat /run"); !strings.Contains(got, "Type: directory") {
		t.Errorf("/run is no directory (a mount point the agent needs):\n%s", got)
	}
}
