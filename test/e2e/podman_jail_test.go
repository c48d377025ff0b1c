package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/ociruntime"
)

// TestPodmanOverlayQEMUUnprivileged: Podman on its usual overlay driver
// mounts the container's rootfs itself, an overlay that Linux cannot
// id-map. qemu still runs as an unprivileged host user, in a user
// namespace that maps the host's ids to themselves (ADR 022), and
// ownership in the rootfs is the image's and the container's on the host
// as in the guest: a file the container chowns, and a root-only file put
// in on the host, which the guest reads through qemu.
func TestPodmanOverlayQEMUUnprivileged(t *testing.T) {
	requireJail(t)
	p := startPodmanDriver(t, "overlay")
	p.mustPodman(t, "run", "-d", "--name", "ov", "--network", "none", podmanImage,
		"sh", "-c", "echo x > /made && chown 1000:1001 /made && echo ready && exec sleep 600")
	waitLogs(t, p, "ov", "ready", 60*time.Second)
	// A root-only file put in the rootfs on the host (through the overlay
	// that qemu serves): the guest reads it through qemu, which may then
	// override permissions on host root's files in its shares.
	merged := strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", "ov"))
	if err := os.WriteFile(filepath.Join(merged, "secret"), []byte("root-only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := p.podman(t, "exec", "ov", "sh", "-c", "stat -c %u:%g:%a /bin/busybox /made /secret; cat /secret")
	if want := "0:0:755\n1000:1001:644\n0:0:600\nroot-only\n"; code != 0 || out != want {
		t.Fatalf("in the guest: exit %d, %q (stderr %q), want %q", code, out, errOut, want)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(merged, "made"), &st); err != nil || st.Uid != 1000 || st.Gid != 1001 {
		t.Errorf("on the host, %s/made: %+v %v, want owner 1000:1001", merged, st, err)
	}
	if err := syscall.Stat(filepath.Join(merged, "bin/busybox"), &st); err != nil || st.Uid != 0 {
		t.Errorf("on the host, %s/bin/busybox: %+v %v, want owner root", merged, st, err)
	}

	pid, err := strconv.Atoi(strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.State.Pid}}", "ov")))
	if err != nil {
		t.Fatal(err)
	}
	qemu := childNamed(t, pid, "qemu")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", qemu))
	if err != nil {
		t.Fatal(err)
	}
	// Its capabilities are ambient: it is not its namespace's root (host
	// root's id there).
	for _, want := range []string{"Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t000000000000001b", "CapBnd:\t000000000000001b", "CapAmb:\t000000000000001b"} {
		if !strings.Contains(string(status), want+"\n") {
			t.Errorf("qemu's /proc/%d/status lacks %q", qemu, want)
		}
	}
	umap, _ := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", qemu))
	if f := strings.Fields(string(umap)); len(f) != 6 || f[0] != "0" || f[1] != "0" || f[3] != strconv.Itoa(jail.IDBase) {
		t.Errorf("qemu's uid_map %q: want the host's ids and its own range", umap)
	}
	id := strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.Id}}", "ov"))
	// What qemu may write, plainly bound: the rootfs, the container's
	// files podman made (userdata: shm, hosts, ...), its sockets.
	userdata := strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.StaticDir}}", "ov"))
	checkQEMUUnprivileged(t, qemu, string(status), merged, userdata, ociruntime.SocketDir("/run/msb"), filepath.Join("/run/msb/vms", id))
	p.mustPodman(t, "rm", "-f", "-t", "0", "ov")
}
