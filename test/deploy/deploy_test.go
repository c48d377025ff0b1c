// Package deploy tests the node installer (deploy/node-install.sh) the way
// its DaemonSet runs it, short of a cluster: it builds the installer image
// (hack/build-deploy-image.sh), unpacks it, and runs the image's own busybox
// sh and node-install.sh against a node root tree holding a containerd
// config and the containerd binary, with node commands run in a chroot of
// that tree (MSB_HOST_EXEC=chroot) and the restart skipped. Root only:
// chroot. Needs install.sh's outputs: the guest image in /var/lib/msb, the
// msb binaries and containerd in /var/cache/msb.
package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	msbLib     = envOr("MSB_LIB", "/var/lib/msb")
	msbCache   = envOr("MSB_CACHE", "/var/cache/msb")
	containerd = envOr("MSB_TEST_CONTAINERD", filepath.Join(msbCache, "bin", "containerd"))
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// requireInputs skips the test where it cannot run.
func requireInputs(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("root only: node commands run in a chroot of the node tree")
	}
	for _, p := range []string{
		filepath.Join(msbLib, "manifest.json"), filepath.Join(msbLib, "vmlinux"),
		filepath.Join(msbCache, "msb-runtime"), filepath.Join(msbCache, "containerd-shim-msb-v2"),
		containerd, "/bin/busybox",
	} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%v (run install.sh first)", err)
		}
	}
}

// image is the installer image, built and unpacked once for all tests in
// imageDir (removed by TestMain).
var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if imageDir != "" {
		os.RemoveAll(imageDir)
	}
	os.Exit(code)
}

// setup skips the test where it cannot run, else returns a temp dir (with
// a tmp/ for the installer's temp files) and the installer.
func setup(t *testing.T) (string, installer) {
	t.Helper()
	requireInputs(t)
	imageOnce.Do(func() {
		if imageDir, imageErr = os.MkdirTemp("", "msb-deploy-test-"); imageErr == nil {
			imageErr = buildImage(imageDir)
		}
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	return dir, installer{image: filepath.Join(imageDir, "image")}
}

// buildImage builds the installer image in dir and unpacks its layer in
// dir/image.
func buildImage(dir string) error {
	tarPath := filepath.Join(dir, "msb-deploy.tar")
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(wd, "..", "..", "hack", "build-deploy-image.sh"), "-o", tarPath)
	cmd.Env = append(os.Environ(), "BIN_DIR="+msbCache, "MSB_LIB="+msbLib)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build-deploy-image.sh: %w\n%s", err, out)
	}
	root := filepath.Join(dir, "image")
	if err := unpackImage(tarPath, "msb.local/msb-deploy:latest", root); err != nil {
		return err
	}
	// what the DaemonSet runs, as runc finds it on the image's PATH
	for _, p := range []string{"bin/sh", "usr/bin/test", "usr/bin/nsenter", "usr/sbin/chroot", "opt/msb-deploy/node-install.sh"} {
		if err := inImage(root, p); err != nil {
			return err
		}
	}
	return nil
}

// inImage checks that p resolves, within the image root, to an executable.
func inImage(root, p string) error {
	for range 8 {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			return fmt.Errorf("image: %w", err)
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			if fi.Mode()&0o111 == 0 {
				return fmt.Errorf("image: /%s is not executable", p)
			}
			return nil
		}
		target, _ := os.Readlink(filepath.Join(root, p))
		if !filepath.IsAbs(target) {
			target = filepath.Join("/", filepath.Dir(p), target)
		}
		p = filepath.Clean(target)[1:]
	}
	return fmt.Errorf("image: /%s: too many links", p)
}

// installer runs the image's node-install.sh with the image's busybox sh.
type installer struct {
	image string
}

func (in installer) run(t *testing.T, node, verb string, extraEnv ...string) string {
	t.Helper()
	out, err := in.try(node, verb, extraEnv...)
	if err != nil {
		t.Fatalf("node-install.sh %s: %v\n%s", verb, err, out)
	}
	t.Logf("node-install.sh %s:\n%s", verb, out)
	return out
}

// try runs node-install.sh VERB, returning its output and error.
func (in installer) try(node, verb string, extraEnv ...string) (string, error) {
	cmd := exec.Command(filepath.Join(in.image, "bin", "busybox"), "sh",
		filepath.Join(in.image, "opt", "msb-deploy", "node-install.sh"), verb)
	// the image's own tools first, as in its container
	cmd.Env = append([]string{
		"PATH=" + filepath.Join(in.image, "bin") + ":" + filepath.Join(in.image, "usr", "bin") + ":" +
			filepath.Join(in.image, "sbin") + ":" + filepath.Join(in.image, "usr", "sbin"),
		"HOST_ROOT=" + node, "MSB_HOST_EXEC=chroot", "MSB_SKIP_RESTART=1",
		"TMPDIR=" + filepath.Join(node, "..", "tmp"),
	}, extraEnv...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
