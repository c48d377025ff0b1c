package deploy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
)

// nodeCase is a node as the installer may find it.
type nodeCase struct {
	name  string
	files map[string]string // node path -> content, before the install
	// mode is how the installer adds the runtime: dropin, append,
	// created or none (install.sh's entry already there).
	mode string
	// wants are settings of the merged config (containerd config dump,
	// always the newest version's naming) after the install: key path,
	// "/"-separated, -> value.
	wants map[string]any
}

const (
	ctdConfig = "/etc/containerd/config.toml"
	dropIn    = "/etc/containerd/conf.d/msb.toml"

	configV3 = `version = 3
root = "/var/lib/containerd-test"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "native"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = true
`
	configV2 = "version = 2\nroot = \"/var/lib/containerd-test\"\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.example/pause:9\"\n" +
		"  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n    runtime_type = \"io.containerd.runc.v2\"\n" +
		"    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n      SystemdCgroup = true\n"
	configV2Imports = "version = 2\nimports = [\"/etc/containerd/extra.toml\"]\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.example/pause:9\"\n"
	configV1        = "root = \"/var/lib/containerd-test\"\n\n[plugins.cri]\n  sandbox_image = \"registry.example/pause:9\"\n"
	configInstallSh = "version = 3\n\n# added by msb install.sh: CRI runtime handler \"msb\" (ctr uses --runtime io.containerd.msb.v2)\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.msb]\n  runtime_type = 'io.containerd.msb.v2'\n  privileged_without_host_devices = true\n"

	keyRoot    = "root"
	keySandbox = "plugins/io.containerd.cri.v1.images/pinned_images/sandbox"
	keySystemd = "plugins/io.containerd.cri.v1.runtime/containerd/runtimes/runc/options/SystemdCgroup"
	keyMsb     = "plugins/io.containerd.cri.v1.runtime/containerd/runtimes/msb/"
	testRoot   = "/var/lib/containerd-test"
	testPause  = "registry.example/pause:9"
)

var cases = []nodeCase{
	{name: "v3", files: map[string]string{ctdConfig: configV3}, mode: "dropin",
		wants: map[string]any{keyRoot: testRoot, "plugins/io.containerd.cri.v1.images/snapshotter": "native", keySystemd: true}},
	{name: "v2", files: map[string]string{ctdConfig: configV2}, mode: "dropin",
		wants: map[string]any{keyRoot: testRoot, keySandbox: testPause, keySystemd: true}},
	{name: "v2-imports", files: map[string]string{ctdConfig: configV2Imports,
		"/etc/containerd/extra.toml": "version = 2\n\n[debug]\n  level = \"debug\"\n"}, mode: "dropin",
		wants: map[string]any{"debug/level": "debug", keySandbox: testPause}},
	{name: "v1", files: map[string]string{ctdConfig: configV1}, mode: "append",
		wants: map[string]any{keyRoot: testRoot, keySandbox: testPause}},
	{name: "absent", mode: "created"},
	{name: "after-install.sh", files: map[string]string{ctdConfig: configInstallSh,
		"/usr/local/bin/msb-runtime": "an older msb-runtime\n", "/etc/msb/config.toml": "vcpus = 2\n"}, mode: "none"},
}

func TestNodeInstall(t *testing.T) {
	dir, in := setup(t)
	ctds := map[string]string{"": containerd}
	if old := os.Getenv("MSB_TEST_CONTAINERD_OLD"); old != "" { // .ci/run's containerd 2.2
		ctds["old/"] = old
	}
	for label, ctd := range ctds {
		for _, c := range cases {
			t.Run(label+c.name, func(t *testing.T) {
				node := newNodeWith(t, ctd, filepath.Join(dir, "node-"+c.name), c.files)
				if label != "" && c.mode == "append" {
					// containerd 2.2 drops a version 1 config's plugins.cri
					// (2.4 migrates it): the install must say so and fail
					testRefused(t, in, node)
					return
				}
				testNodeInstall(t, in, c, node)
			})
		}
	}
}

// testRefused: an install the node's containerd would not see fails and
// leaves the config as it was; uninstall takes the rest away.
func testRefused(t *testing.T, in installer, node string) {
	before := snapshot(t, node)
	cfg, _ := os.ReadFile(filepath.Join(node, ctdConfig))
	out, err := in.try(node, "install")
	if err == nil || !strings.Contains(out, "does not see the msb runtime") {
		t.Fatalf("install: %v, want it refused:\n%s", err, out)
	}
	if now, _ := os.ReadFile(filepath.Join(node, ctdConfig)); !bytes.Equal(now, cfg) {
		t.Errorf("a refused install changed the config:\n%s", now)
	}
	in.run(t, node, "uninstall")
	if d := diffTrees(before, snapshot(t, node)); d != "" {
		t.Errorf("uninstall left the node changed:\n%s", d)
	}
}

func testNodeInstall(t *testing.T, in installer, c nodeCase, node string) {
	before := snapshot(t, node)

	out := in.run(t, node, "install")
	if c.mode != "none" && !strings.Contains(out, "restart skipped (MSB_SKIP_RESTART=1)") {
		t.Errorf("install changed containerd's config but asked no restart")
	}
	checkMode(t, node, c.mode)
	dump := configDump(t, node)
	want(t, dump, keyMsb+"runtime_type", "io.containerd.msb.v2")
	want(t, dump, keyMsb+"privileged_without_host_devices", true)
	for k, v := range c.wants {
		want(t, dump, k, v)
	}
	checkPlacement(t, node, c.files["/etc/msb/config.toml"] == "")

	installed := snapshot(t, node)
	out = in.run(t, node, "install")
	if !strings.Contains(out, "containerd's config unchanged: no restart") {
		t.Errorf("a second install changed containerd's config")
	}
	if d := diffTrees(installed, snapshot(t, node)); d != "" {
		t.Errorf("a second install changed the node:\n%s", d)
	}

	in.run(t, node, "uninstall")
	if d := diffTrees(before, snapshot(t, node)); d != "" {
		t.Errorf("uninstall left the node changed:\n%s", d)
	}
}

// TestUninstallAfterEdit: a config edited after the install loses only the
// installer's lines.
func TestUninstallAfterEdit(t *testing.T) {
	dir, in := setup(t)
	for _, c := range cases[:4] { // v3, v2, v2-imports (drop-in), v1 (appended)
		t.Run(c.name, func(t *testing.T) {
			node := newNode(t, filepath.Join(dir, "node-"+c.name), c.files)
			in.run(t, node, "install")
			const edit = "\n# edited by the admin after the install\n"
			p := filepath.Join(node, ctdConfig)
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString(edit); err != nil {
				t.Fatal(err)
			}
			f.Close()
			in.run(t, node, "uninstall")
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if w := c.files[ctdConfig] + edit; string(got) != w {
				t.Errorf("config after uninstall:\n%s\nwant:\n%s", got, w)
			}
		})
	}
}

// newNode makes a node root: the containerd binary and the libraries it
// loads (it runs chrooted there), and files.
func newNode(t *testing.T, root string, files map[string]string) string {
	return newNodeWith(t, containerd, root, files)
}

// newNodeWith is newNode with the containerd binary ctd.
func newNodeWith(t *testing.T, ctd, root string, files map[string]string) string {
	t.Helper()
	t.Cleanup(func() { os.RemoveAll(root) }) // each holds a guest image
	copyFile(t, ctd, filepath.Join(root, "usr/local/bin/containerd"), 0o755)
	out, err := exec.Command("ldd", ctd).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", ctd, err)
	}
	for _, m := range regexp.MustCompile(`(/\S+\.so[.\d]*)`).FindAllString(string(out), -1) {
		copyFile(t, m, filepath.Join(root, m), 0o755)
	}
	for p, content := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// configDump is the node's merged containerd config, as containerd reads it.
func configDump(t *testing.T, node string) map[string]any {
	t.Helper()
	cmd := exec.Command("chroot", node, "/usr/local/bin/containerd", "--config", ctdConfig, "config", "dump")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, stderr.Bytes())
	}
	var m map[string]any
	if err := toml.Unmarshal(out, &m); err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, out)
	}
	return m
}

// want checks the value at a "/"-separated key path of a decoded TOML document.
func want(t *testing.T, m map[string]any, path string, w any) {
	t.Helper()
	var v any = m
	for _, k := range strings.Split(path, "/") {
		mm, ok := v.(map[string]any)
		if !ok {
			t.Errorf("%s: no table at %q", path, k)
			return
		}
		v = mm[k]
	}
	if v != w {
		t.Errorf("%s = %v, want %v", path, v, w)
	}
}

// checkMode checks how the runtime was added.
func checkMode(t *testing.T, node, mode string) {
	t.Helper()
	cfg, _ := os.ReadFile(filepath.Join(node, ctdConfig))
	_, err := os.Stat(filepath.Join(node, dropIn))
	hasDropIn := err == nil
	switch mode {
	case "dropin":
		if !hasDropIn || !strings.Contains(string(cfg), "'"+dropIn+"'") || strings.Contains(string(cfg), "io.containerd.msb.v2") {
			t.Errorf("want the drop-in %s imported, config unchanged otherwise:\n%s", dropIn, cfg)
		}
	case "append", "created":
		if hasDropIn || !strings.Contains(string(cfg), "# added by msb node-install.sh:") {
			t.Errorf("want the entry in the config itself (%s):\n%s", mode, cfg)
		}
	case "none":
		if hasDropIn || strings.Contains(string(cfg), "node-install.sh") {
			t.Errorf("want the config left as it was:\n%s", cfg)
		}
	}
}

// checkPlacement checks that the binaries and the guest image are where the
// shim and msb-runtime look for them, as the image carried them.
func checkPlacement(t *testing.T, node string, wroteConfig bool) {
	t.Helper()
	same := func(src, dst string) {
		t.Helper()
		a, err1 := os.ReadFile(src)
		b, err2 := os.ReadFile(filepath.Join(node, dst))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s on the node is not %s (%v, %v)", dst, src, err1, err2)
		}
	}
	// containerd finds the shim on its PATH; the shim, msb-runtime beside itself (manager.VMMBinary)
	same(filepath.Join(msbCache, "containerd-shim-msb-v2"), "/usr/local/bin/containerd-shim-msb-v2")
	same(filepath.Join(msbCache, "msb-runtime"), "/usr/local/bin/msb-runtime")
	if !wroteConfig {
		return
	}
	c, err := config.Load(filepath.Join(node, config.DefaultPath))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kernel != config.Default().Kernel || c.GuestRoot != config.Default().GuestRoot || c.Initrd != config.Default().Initrd {
		t.Errorf("the written config moves the guest image: %+v", c)
	}
	same(filepath.Join(msbLib, "vmlinux"), c.Kernel)
	same(filepath.Join(msbLib, "manifest.json"), filepath.Join(filepath.Dir(c.Kernel), "manifest.json"))
	if _, err := os.Stat(filepath.Join(msbLib, launch.RootDiskFile)); err == nil {
		same(filepath.Join(msbLib, launch.RootDiskFile), filepath.Join(filepath.Dir(c.Kernel), launch.RootDiskFile))
	}
	if _, err := os.Stat(filepath.Join(msbLib, "krunroot")); err == nil {
		if d := diffTrees(snapshot(t, filepath.Join(msbLib, "krunroot")), snapshot(t, filepath.Join(node, c.GuestRoot))); d != "" {
			t.Errorf("guest_root on the node differs from %s/krunroot:\n%s", msbLib, d)
		}
	}
}

// snapshot maps each path below root to its type, mode and content hash
// (a symlink to its target); the installer's timestamp file is left out.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "var/lib/msb-deploy/installed" {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			m[rel] = "link " + target
		case fi.IsDir():
			m[rel] = fmt.Sprintf("dir %v", fi.Mode())
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			m[rel] = fmt.Sprintf("file %v %x", fi.Mode(), sha256.Sum256(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// diffTrees lists what differs between two snapshots.
func diffTrees(a, b map[string]string) string {
	var d []string
	for p, v := range a {
		if w, ok := b[p]; !ok {
			d = append(d, "- "+p+" ("+v+")")
		} else if v != w {
			d = append(d, "~ "+p+": "+v+" -> "+w)
		}
	}
	for p, w := range b {
		if _, ok := a[p]; !ok {
			d = append(d, "+ "+p+" ("+w+")")
		}
	}
	return strings.Join(d, "\n")
}

// TestRestart: containerd is restarted through the node when its config
// changed, and only then: by systemctl where the node runs systemd, else
// by MSB_RESTART_CMD. The node's sh and systemctl are stand-ins that log
// each call to /restarts.
func TestRestart(t *testing.T) {
	dir, in := setup(t)
	for _, c := range []struct {
		name, want string
		env        []string
	}{
		{"systemd", "systemctl restart containerd\n", nil},
		{"hook", "hook\n", []string{"MSB_RESTART_CMD=echo hook >>/restarts"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			node := newNode(t, filepath.Join(dir, "node-"+c.name), map[string]string{ctdConfig: configV3})
			copyFile(t, "/bin/busybox", filepath.Join(node, "bin/sh"), 0o755)
			if c.name == "systemd" {
				if err := os.MkdirAll(filepath.Join(node, "run/systemd/system"), 0o755); err != nil {
					t.Fatal(err)
				}
				stub := filepath.Join(dir, "systemctl-"+c.name)
				if err := os.WriteFile(stub, []byte("#!/bin/sh\necho systemctl \"$@\" >>/restarts\n"), 0o755); err != nil {
					t.Fatal(err)
				}
				copyFile(t, stub, filepath.Join(node, "usr/bin/systemctl"), 0o755)
			}
			env := append([]string{"MSB_SKIP_RESTART=0"}, c.env...)
			restarts := func() string {
				b, _ := os.ReadFile(filepath.Join(node, "restarts"))
				return string(b)
			}
			in.run(t, node, "install", env...)
			if got := restarts(); got != c.want {
				t.Errorf("after install, restarts: %q, want %q", got, c.want)
			}
			in.run(t, node, "install", env...)
			if got := restarts(); got != c.want {
				t.Errorf("a second install restarted containerd: %q", got)
			}
			in.run(t, node, "uninstall", env...)
			if got := restarts(); got != c.want+c.want {
				t.Errorf("after uninstall, restarts: %q, want %q", got, c.want+c.want)
			}
		})
	}
}
