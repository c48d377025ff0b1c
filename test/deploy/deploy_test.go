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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// repoRoot is the module root, two levels up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

// buildImage builds the installer image and unpacks its layer; it returns
// the unpacked root.
func buildImage(t *testing.T, dir string) string {
	t.Helper()
	tarPath := filepath.Join(dir, "msb-deploy.tar")
	cmd := exec.Command(filepath.Join(repoRoot(t), "hack", "build-deploy-image.sh"), "-o", tarPath)
	cmd.Env = append(os.Environ(), "BIN_DIR="+msbCache, "MSB_LIB="+msbLib)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-deploy-image.sh: %v\n%s", err, out)
	} else {
		t.Logf("%s", strings.TrimSpace(string(out)))
	}
	root := filepath.Join(dir, "image")
	if err := unpackImage(tarPath, "msb.local/msb-deploy:latest", root); err != nil {
		t.Fatal(err)
	}
	return root
}

// installer runs the image's node-install.sh with the image's busybox sh.
type installer struct {
	image string
}

func (in installer) run(t *testing.T, node, verb string, extraEnv ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(in.image, "bin", "busybox"), "sh",
		filepath.Join(in.image, "opt", "msb-deploy", "node-install.sh"), verb)
	// the image's own tools first, as in its container
	cmd.Env = append([]string{
		"PATH=" + filepath.Join(in.image, "bin") + ":" + filepath.Join(in.image, "usr", "bin") + ":" +
			filepath.Join(in.image, "sbin") + ":" + filepath.Join(in.image, "usr", "sbin"),
		"HOST_ROOT=" + node, "MSB_HOST_EXEC=chroot", "MSB_SKIP_RESTART=1", "CONTAINERD=/usr/local/bin/containerd",
		"TMPDIR=" + filepath.Join(node, "..", "tmp"),
	}, extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node-install.sh %s: %v\n%s", verb, err, out)
	}
	t.Logf("node-install.sh %s:\n%s", verb, out)
	return string(out)
}
