package e2e

// Podman for the Podman end-to-end tests: Debian 12's podman 4.3 with
// conmon, msb-runtime (built from the tree) as its OCI runtime, its own
// storage (vfs) and run dirs below a test dir, in a network namespace of
// the test (its CNI bridge and iptables land there, never in the host's).

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/mounts"
)

const podmanImage = "msb.local/busybox:latest"

// podmanEnv leaves msb-runtime its default --root (/run/msb): podman does
// not pass --runtime-flag on to the cleanup it has conmon run after a
// container's exit, so a root set there would miss the deletes.
type podmanEnv struct {
	dir, netns string
	driver     string // storage driver: vfs (a plain directory rootfs), overlay
	// conf, when set, is the containers.conf podman reads
	// (CONTAINERS_CONF).
	conf string
}

// startPodman skips without podman unless MSB_TEST_PODMAN=1 asks for it.
func startPodman(t *testing.T) *podmanEnv {
	t.Helper()
	return startPodmanDriver(t, "vfs")
}

// startPodmanDriver is startPodman with the storage driver given.
func startPodmanDriver(t *testing.T, driver string) *podmanEnv {
	t.Helper()
	requireVM(t)
	if _, err := exec.LookPath("podman"); err != nil {
		if os.Getenv("MSB_TEST_PODMAN") == "1" {
			t.Fatal("podman missing: apt-get install podman")
		}
		t.Skip("podman missing: apt-get install podman")
	}
	dir, err := os.MkdirTemp("/tmp", "msbp-")
	if err != nil {
		t.Fatal(err)
	}
	p := &podmanEnv{dir: dir, netns: newNetNS(t), driver: driver}
	t.Cleanup(func() { p.stop(t) })
	tarPath := filepath.Join(dir, "busybox.tar")
	if err := writeBusyboxTar(tarPath); err != nil {
		t.Fatal(err)
	}
	p.mustPodman(t, "import", tarPath, podmanImage)
	return p
}

// cmd is podman with this env's storage, network config and runtime,
// started in the test's namespace.
func (p *podmanEnv) cmd(ctx context.Context, args ...string) *exec.Cmd {
	global := []string{
		"--root", filepath.Join(p.dir, "storage"), "--runroot", filepath.Join(p.dir, "run"),
		"--tmpdir", filepath.Join(p.dir, "tmp"), "--network-config-dir", filepath.Join(p.dir, "cni"),
		"--storage-driver", p.driver, "--cgroup-manager", "cgroupfs", "--events-backend", "file",
		"--runtime", msbRuntime,
	}
	cmd := exec.CommandContext(ctx, "podman", append(global, args...)...)
	cmd.Env = append(os.Environ(), "MSB_CONFIG="+configFile)
	if p.conf != "" {
		cmd.Env = append(cmd.Env, "CONTAINERS_CONF="+p.conf)
	}
	return cmd
}

func (p *podmanEnv) start(cmd *exec.Cmd) error { return inNetNS(p.netns, cmd.Start) }

// podman runs a podman command to its end; it returns stdout, stderr and
// the exit status.
func (p *podmanEnv) podman(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := p.cmd(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := p.start(cmd); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	return out.String(), errb.String(), exitCode(t, err)
}

func (p *podmanEnv) mustPodman(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := p.podman(t, args...)
	if code != 0 {
		t.Fatalf("podman %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// stop removes every container, then checks nothing of msb is left for
// them: no VMM process, no state under the runtime root.
func (p *podmanEnv) stop(t *testing.T) {
	ids, _, _ := p.podman(t, "ps", "-a", "-q", "--no-trunc")
	_, _, _ = p.podman(t, "rm", "-a", "-f", "-t", "0")
	deadline := time.Now().Add(20 * time.Second)
	for {
		var procs, dirs []string
		for _, id := range strings.Fields(ids) {
			dir := filepath.Join("/run/msb/vms", id)
			procs = append(procs, processesNaming(dir)...)
			if _, err := os.Stat(dir); err == nil {
				dirs = append(dirs, dir)
			}
		}
		if len(procs)+len(dirs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			if !t.Failed() {
				t.Errorf("left behind: processes %v, state %v", procs, dirs)
			}
			for _, pr := range procs {
				var pid int
				fmt.Sscan(pr, &pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	_ = mounts.UnmountBelow(p.dir)
	_ = os.RemoveAll(p.dir)
}

// processesNaming lists "pid: cmdline" of the processes whose command line
// contains s.
func processesNaming(s string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, _ := os.ReadFile(f)
		if bytes.Contains(b, []byte(s)) {
			out = append(out, filepath.Base(filepath.Dir(f))+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// writeBusyboxTar writes an image root with the host's static busybox and
// every applet it has (httpd, wget, ip, nc ...), for `podman import` and
// `docker import`.
func writeBusyboxTar(path string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	list, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "www/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			return err
		}
	}
	files := map[string][]byte{
		"bin/busybox":     bb,
		"etc/passwd":      []byte("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/:/bin/sh\n"),
		"etc/group":       []byte("root:x:0:\nuser:x:1000:\n"),
		"www/index.html":  []byte("msb-web\n"),
		"etc/hostname":    []byte("busybox\n"),
		"etc/resolv.conf": nil,
		// A pod's infra command (podman pod create --infra-command takes
		// one word).
		"bin/pause": []byte("#!/bin/sh\nexec sleep 2147483647\n"),
	}
	for _, name := range []string{"bin/busybox", "etc/passwd", "etc/group", "www/index.html", "etc/hostname", "etc/resolv.conf", "bin/pause"} {
		mode := int64(0o644)
		if name == "bin/busybox" || name == "bin/pause" {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(files[name]))}); err != nil {
			return err
		}
		if _, err := tw.Write(files[name]); err != nil {
			return err
		}
	}
	for _, app := range strings.Fields(string(list)) {
		if app == "busybox" || app == "pause" {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + app, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}); err != nil {
			return err
		}
	}
	return tw.Close()
}
