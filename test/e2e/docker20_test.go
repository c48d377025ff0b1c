package e2e

// Docker Engine 20.10 as Debian 12 ships it (docker.io), with msb-runtime
// as a runc-compatible runtime ("runtimes": {"msb": {"path": ...}}):
// dockerd runs containerd's runc shim with msb-runtime as its runc binary,
// and its network setup (libnetwork's prestart hook moving the veth into
// the namespace of the container's pid, the VMM process) lands in the VM.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// docker20Bins finds Docker 20.10 ($MSB_TEST_DOCKER20_DIR, else
// hack/get-docker20.sh's cache dir); without it the test skips unless
// MSB_TEST_DOCKER=1.
func docker20Bins(t *testing.T) string {
	t.Helper()
	dir := envOr("MSB_TEST_DOCKER20_DIR", "/var/cache/msb/docker-20.10")
	for _, b := range []string{"dockerd", "docker-proxy", "docker"} {
		if !isExecutable(filepath.Join(dir, b)) {
			msg := filepath.Join(dir, b) + " missing: run hack/get-docker20.sh " + dir
			if os.Getenv("MSB_TEST_DOCKER") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return dir
}

func startDocker20(t *testing.T) *dockerEnv {
	t.Helper()
	dir := docker20Bins(t)
	d := startDockerd(t, dir, filepath.Join(dir, "docker"), map[string]any{
		"runtimes":       map[string]any{"msb": map[string]string{"path": msbRuntime}},
		"storage-driver": "overlay2",
	})
	tar := filepath.Join(d.dir, "busybox.tar")
	if err := writeBusyboxTar(tar); err != nil {
		t.Fatal(err)
	}
	d.mustDocker(t, "import", tar, "msb.local/busybox:latest")
	return d
}

func TestDocker20Run(t *testing.T) {
	d := startDocker20(t)
	rel := guestRelease(t)
	out := d.mustDocker(t, "run", "--rm", "--runtime", "msb", "msb.local/busybox", "uname", "-r")
	if strings.TrimSpace(out) != rel {
		t.Fatalf("docker run: %q, want the guest kernel %q", out, rel)
	}
	if code, out := d.exitCode(t, "run", "--rm", "--runtime", "msb", "--network", "none", "msb.local/busybox", "sh", "-c", "echo out; ip -o link | grep -v lo: | wc -l; exit 3"); code != 3 || strings.Fields(out)[0] != "out" || strings.Fields(out)[1] != "0" {
		t.Fatalf("--network none: exit status %d (want 3), stdout %q (want out and no NIC but lo)", code, out)
	}
}

func TestDocker20Lifecycle(t *testing.T) {
	d := startDocker20(t)
	vol := t.TempDir()
	d.mustDocker(t, "run", "-d", "--runtime", "msb", "--name", "web", "-p", "8080:80", "-v", vol+":/vol",
		"msb.local/busybox", "sh", "-c", `trap "exit 143" TERM; echo from-guest > /vol/out; echo ready; httpd -f -p 80 -h /www & wait`)
	for _, url := range []string{"http://127.0.0.1:8080/", "http://" + dockerBridgeGW + ":8080/"} {
		body, err := httpGet(d.netns, url, 60*time.Second)
		if err != nil || body != "msb-web\n" {
			t.Fatalf("GET %s: %q %v\n%s", url, body, err, tail(d.log(), 20))
		}
	}
	if b, err := os.ReadFile(filepath.Join(vol, "out")); err != nil || string(b) != "from-guest\n" {
		t.Fatalf("rw volume: %q %v", b, err)
	}
	if logs := d.mustDocker(t, "logs", "web"); !strings.Contains(logs, "ready") {
		t.Fatalf("logs %q", logs)
	}
	if code, out := d.exitCode(t, "exec", "web", "sh", "-c", "echo in-exec; wget -qO- http://"+dockerBridgeGW+":9/ >/dev/null 2>&1; ip -4 route; exit 4"); code != 4 || !strings.Contains(out, "default via "+dockerBridgeGW) {
		t.Fatalf("exec: exit %d (want 4), %q", code, out)
	}
	checkExecTTY(t, d.dockerCmd(t.Context(), "exec", "-it", "web", "sh"))
	if top := d.mustDocker(t, "top", "web"); !strings.Contains(top, "vmm") {
		t.Errorf("docker top %q: want the VMM process", top)
	}
	d.mustDocker(t, "pause", "web")
	if st := d.state(t, "web"); st != "paused" {
		t.Errorf("state after pause: %s", st)
	}
	d.mustDocker(t, "unpause", "web")
	d.mustDocker(t, "stop", "-t", "30", "web")
	if code := strings.TrimSpace(d.mustDocker(t, "inspect", "-f", "{{.State.ExitCode}}", "web")); code != "143" {
		t.Errorf("exit code after stop: %s, want 143", code)
	}
	d.mustDocker(t, "start", "web")
	if _, err := httpGet(d.netns, "http://127.0.0.1:8080/", 60*time.Second); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	d.mustDocker(t, "rm", "-f", "web")
}
