// Package e2e runs msb-runtime, the shim and real clients against real
// VMs (QEMU, KVM or TCG) with busybox bundles built by the tests. It runs
// only when asked, with MSB_E2E=1 (README's test command, CI): a plain
// `go test ./...` on an installed host boots no VM. It needs the guest
// image (install.sh or hack/build-guest-image.sh); with MSB_E2E=1 a
// missing one is a failure.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/ociruntime"
)

var (
	msbRuntime string // built by TestMain
	configFile string
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Getenv("MSB_E2E") != "1" {
		fmt.Println("test/e2e boots VMs and drives real clients: set MSB_E2E=1 to run it")
		return 0
	}
	tmp, err := os.MkdirTemp("", "msb-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	image := envOr("MSB_TEST_IMAGE", "/var/lib/msb")
	switch {
	case os.Geteuid() != 0:
		skipReason = "e2e tests need root"
	case !exists(filepath.Join(image, "vmlinux")) || !exists(filepath.Join(image, "initrd.cpio")) && !exists(filepath.Join(image, "rootfs.img")):
		skipReason = "no guest image in " + image + ": run install.sh or hack/build-guest-image.sh"
	case !exists("/bin/busybox"):
		skipReason = "no /bin/busybox: apt-get install busybox-static"
	}
	if skipReason == "" {
		msbRuntime = filepath.Join(tmp, "msb-runtime")
		build := exec.Command("go", "build", "-o", msbRuntime, "../../cmd/msb-runtime")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build msb-runtime:", err)
			return 1
		}
		configFile = filepath.Join(tmp, "config.toml")
		// Every io.msb.* annotation enabled: the tests use them all.
		cfg := fmt.Sprintf("kernel = %q\ninitrd = %q\nboot_timeout = %q\naccel = %q\nenable_annotations = ['io\\.msb\\..*']\n",
			filepath.Join(image, "vmlinux"), filepath.Join(image, "initrd.cpio"), envOr("MSB_TEST_BOOT_TIMEOUT", "3m"), os.Getenv("MSB_TEST_ACCEL"))
		if os.Getenv("MSB_TEST_NO_JAIL") == "1" { // qemu unjailed (docs/security.md), for comparison
			cfg += "jail = false\n"
		}
		if err := os.WriteFile(configFile, []byte(cfg), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

func requireVM(t *testing.T) {
	t.Helper()
	if skipReason == "" {
		return
	}
	if os.Getenv("MSB_E2E") == "1" {
		t.Fatalf("MSB_E2E=1 but %s", skipReason)
	}
	t.Skip(skipReason)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// bundle makes a busybox bundle running args, with the spec adjusted by mut.
func bundle(t *testing.T, args []string, mut func(*specs.Spec)) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "tmp", "etc", "proc", "sys", "dev", "data", "rw", "ro", "work"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"sh", "echo", "cat", "id", "pwd", "hostname", "ulimit", "sleep", "dd", "sha256sum", "head", "df", "touch", "ls", "env", "tee", "true", "false", "mount", "grep", "awk", "uname", "seq"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", app)); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/:/bin/sh\nuser:x:1000:1000:user:/:/bin/sh\n"), 0o644)
	spec := ociruntime.DefaultSpec()
	spec.Process.Args = args
	if mut != nil {
		mut(spec)
	}
	b, err := json.MarshalIndent(spec, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// result of one msb-runtime run.
type result struct {
	stdout, stderr string
	code           int
}

// stateRoot is a short per-test state root (Unix socket paths are short).
func stateRoot(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "msbr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(d)
		os.RemoveAll(ociruntime.SocketDir(d))
	})
	return d
}

func runtimeCmd(root string, args ...string) *exec.Cmd {
	cmd := exec.Command(msbRuntime, append([]string{"--root", root}, args...)...)
	cmd.Env = append(os.Environ(), "MSB_CONFIG="+configFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// run runs a bundle to completion with stdin and returns what came out.
func run(t *testing.T, bundleDir, stdin string) result {
	t.Helper()
	root := stateRoot(t)
	cmd := runtimeCmd(root, "run", "--bundle", bundleDir, "t-"+strings.ReplaceAll(t.Name(), "/", "-"))
	var out, errb bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("msb-runtime run: exit %d in %s", code, time.Since(start).Round(time.Millisecond))
	assertNothingLeft(t, root)
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// assertNothingLeft checks that a finished run left no state, socket or
// process behind.
func assertNothingLeft(t *testing.T, root string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := leftovers(root)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: %v", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leftovers lists what is left of state root root's containers: files
// in it and in its socket dir, entries besides msb's trees, processes
// naming either.
func leftovers(root string) []string {
	var left []string
	sockDir := ociruntime.SocketDir(root)
	for _, dir := range []string{root, sockDir} {
		_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				left = append(left, p)
			}
			return nil
		})
	}
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if e.Name() != "vms" { // msb's tree, empty when all is gone
			left = append(left, filepath.Join(root, e.Name()))
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(root)) || bytes.Contains(b, []byte(sockDir)) {
			left = append(left, "process "+filepath.Base(filepath.Dir(p))+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return left
}
