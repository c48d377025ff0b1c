package e2e

// A Docker Engine for the Docker end-to-end test: dockerd v29 (built by
// hack/build-docker.sh) in a network namespace of the test, against the
// test containerd that runs msb's shim, with msb as a runtime and the
// containerd image store; the docker CLI talks to it over its own socket.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/mounts"
	"golang.org/x/sys/unix"
)

// dockerBridgeGW is the default bridge's address in dockerd's namespace.
const dockerBridgeGW = "10.89.0.1"

// dockerEnv is a dockerd in its own network namespace (netns), its
// socket, and the CLI.
type dockerEnv struct {
	*shimEnv
	netns, dir, sock, cli string
	daemon                *exec.Cmd
	exited                chan struct{}
}

// dockerBins finds dockerd and docker-proxy ($MSB_TEST_DOCKER_DIR, else
// hack/build-docker.sh's cache dir) and the docker CLI (PATH, else that
// dir). Without them the test skips, unless MSB_TEST_DOCKER=1 asks for it.
func dockerBins(t *testing.T) (binDir, cli string) {
	t.Helper()
	binDir = envOr("MSB_TEST_DOCKER_DIR", "/var/cache/msb/docker-v2.0.0-beta.24")
	cli, err := exec.LookPath("docker")
	if err != nil {
		cli = filepath.Join(binDir, "docker")
	}
	for _, p := range []string{filepath.Join(binDir, "dockerd"), filepath.Join(binDir, "docker-proxy"), cli} {
		if !isExecutable(p) {
			msg := p + " missing: run hack/build-docker.sh " + binDir
			if os.Getenv("MSB_TEST_DOCKER") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return binDir, cli
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func startDocker(t *testing.T) *dockerEnv {
	t.Helper()
	binDir, cli := dockerBins(t)
	d := startDockerd(t, binDir, cli, map[string]any{
		"runtimes":  map[string]any{"msb": map[string]string{"runtimeType": msbRuntimeType}},
		"features":  map[string]bool{"containerd-snapshotter": true},
		"ip6tables": false,
	})
	// The busybox image, in the containerd namespace the image store uses.
	tar := filepath.Join(d.Dir, "busybox.tar")
	if _, err := os.Stat(tar); err != nil {
		d.ImportBusybox() // writes it
	}
	if out, err := exec.Command(d.CtrBin, "--address", d.Address, "--namespace", "moby", "image", "import", tar).CombinedOutput(); err != nil {
		t.Fatalf("import busybox for docker: %v: %s", err, out)
	}
	return d
}

// startDockerd starts dockerd from binDir with conf added to the test's
// daemon.json, against a test containerd running msb's shim.
func startDockerd(t *testing.T, binDir, cli string, conf map[string]any) *dockerEnv {
	t.Helper()
	e := startShimEnv(t)
	dir, err := os.MkdirTemp("/tmp", "msbd-")
	if err != nil {
		t.Fatal(err)
	}
	// On a tmpfs, as a data root under /var is on another filesystem than
	// the shim's state under /run on a usual host (rw file binds of
	// /etc/hosts & co must work across filesystems).
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256m,mode=0711"); err != nil {
		t.Fatalf("tmpfs for dockerd: %v", err)
	}
	d := &dockerEnv{shimEnv: e, netns: newNetNS(t), dir: dir, sock: filepath.Join(dir, "docker.sock"), cli: cli, exited: make(chan struct{})}
	all := map[string]any{
		"bip":                          dockerBridgeGW + "/24",
		"log-driver":                   "json-file",
		"containerd-namespace":         "moby",
		"containerd-plugins-namespace": "moby-plugins",
	}
	for k, v := range conf {
		all[k] = v
	}
	b, _ := json.Marshal(all)
	confPath := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(confPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "dockerd"), "--config-file", confPath,
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"), "-H", "unix://"+d.sock,
		"--containerd", e.Address)
	// docker-proxy and the shim on its PATH; its own namespace for the
	// networks it sets up (bridge, iptables), never the host's.
	cmd.Env = append(os.Environ(), "PATH="+binDir+":"+buildShim(t)+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := inNetNS(d.netns, cmd.Start); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	d.daemon = cmd
	go func() { _ = cmd.Wait(); log.Close(); close(d.exited) }()
	// Registered after startShimEnv's cleanup, so it runs first: dockerd
	// removes its containers and stops before the shim env is checked.
	t.Cleanup(func() { d.stop(t) })
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := d.docker("version"); err == nil {
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("dockerd exited: %s", d.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd not up in 2m: %s", d.log())
		}
		time.Sleep(300 * time.Millisecond)
	}
	return d
}

// docker runs the CLI against this dockerd; the error carries stderr.
func (d *dockerEnv) docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := d.dockerCmd(ctx, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func (d *dockerEnv) dockerCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.cli, args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.sock, "DOCKER_CONFIG="+filepath.Join(d.dir, "cli"))
	return cmd
}

func (d *dockerEnv) mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.docker(args...)
	if err != nil {
		t.Fatalf("%v\ndockerd log tail:\n%s", err, tail(d.log(), 20))
	}
	return out
}

// exitCode runs the CLI and returns its exit status (the container's, for
// run and wait).
func (d *dockerEnv) exitCode(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := d.docker(args...)
	return exitCode(t, err), out
}

func (d *dockerEnv) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	return string(b)
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// stop removes every container, stops dockerd and unmounts what it left
// below its dirs.
func (d *dockerEnv) stop(t *testing.T) {
	if ids, err := d.docker("ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
		if _, err := d.docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...); err != nil {
			t.Logf("docker rm -f: %v", err)
		}
	}
	_ = d.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.daemon.Process.Kill()
		<-d.exited
	}
	if err := mounts.UnmountBelow(d.dir); err != nil {
		t.Logf("unmount below %s: %v", d.dir, err)
	}
	if t.Failed() {
		t.Logf("dockerd log tail:\n%s", tail(d.log(), 40))
	}
	_ = os.RemoveAll(d.dir)
	d.waitShimDeletes()
}
