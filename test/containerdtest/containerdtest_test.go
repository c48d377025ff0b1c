package containerdtest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"
)

// TestRunc proves the harness with containerd's own runc shim: import the
// busybox image, run a container to completion, then a detached one that
// survives a containerd restart, and check cleanup leaves nothing behind.
func TestRunc(t *testing.T) {
	Require(t, "containerd-shim-runc-v2", "runc")

	var c *Containerd
	t.Run("run", func(t *testing.T) {
		c = Start(t, Options{})
		t.Logf("containerd %s, namespace %s", c.Version(), c.Namespace)
		img := c.ImportBusybox()
		if out := c.MustCtr("images", "ls", "-q"); !strings.Contains(out, img) {
			t.Fatalf("image %s not listed: %q", img, out)
		}
		start := time.Now()
		out, stderr, err := c.Ctr("run", "--rm", "--runtime", "io.containerd.runc.v2", img, "t1", "echo", "hi")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("ctr run --rm echo hi: %s", time.Since(start).Round(time.Millisecond))
		if out != "hi\n" {
			t.Fatalf("stdout %q, stderr %q; want \"hi\\n\"", out, stderr)
		}

		// exit codes come through
		_, _, err = c.Ctr("run", "--rm", "--runtime", "io.containerd.runc.v2", img, "t2", "sh", "-c", "exit 7")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("exit 7: got %v", err)
		}

		// a detached task survives a containerd restart
		c.MustCtr("run", "-d", "--runtime", "io.containerd.runc.v2", img, "t3", "sleep", "600")
		c.Restart()
		if out := c.MustCtr("tasks", "ls"); !strings.Contains(out, "t3") || !strings.Contains(out, "RUNNING") {
			t.Fatalf("after restart, tasks ls: %q", out)
		}
		if out := c.MustCtr("tasks", "exec", "--exec-id", "e1", "t3", "echo", "still here"); out != "still here\n" {
			t.Fatalf("exec after restart: %q", out)
		}
		// and a crashed containerd comes back too
		c.Kill()
		c.Restart()
		if out := c.MustCtr("tasks", "ls"); !strings.Contains(out, "RUNNING") {
			t.Fatalf("after kill and restart, tasks ls: %q", out)
		}
		if procs, _ := c.Leftovers(); len(procs) == 0 {
			t.Fatal("Leftovers sees no shim or container process while t3 runs")
		}
		// t3 is left running on purpose: the cleanup must remove it
	})
	if c == nil {
		return
	}
	procs, mounts := c.Leftovers()
	if len(procs) > 0 || len(mounts) > 0 {
		t.Errorf("after cleanup: processes %v, mounts %v", procs, mounts)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there (%v)", c.Dir, err)
	}
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", c.Namespace)); !os.IsNotExist(err) {
		t.Errorf("runc state for %s still there (%v)", c.Namespace, err)
	}
}

// TestCleanupAfterCrash: containerd killed and its shim killed with a task
// running; the cleanup still removes the container process, the mounts,
// runc's state and the cgroups.
func TestCleanupAfterCrash(t *testing.T) {
	Require(t, "containerd-shim-runc-v2", "runc")
	var c *Containerd
	var cgroups []string
	t.Run("crash", func(t *testing.T) {
		c = Start(t, Options{})
		img := c.ImportBusybox()
		c.MustCtr("run", "-d", "--runtime", "io.containerd.runc.v2", img, "c1", "sleep", "600")
		c.Kill()
		procs, mounts := c.Leftovers()
		if len(mounts) == 0 {
			t.Error("no rootfs mount seen while c1 runs")
		}
		for _, p := range procs {
			if strings.Contains(p.Cmdline, "containerd-shim-runc-v2") {
				_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			}
		}
		cgroups, _ = filepath.Glob(filepath.Join("/sys/fs/cgroup/*", c.Namespace))
		cgroups = append(cgroups, filepath.Join("/sys/fs/cgroup", c.Namespace))
	})
	if c == nil {
		return
	}
	procs, mounts := c.Leftovers()
	if len(procs) > 0 || len(mounts) > 0 {
		t.Errorf("after cleanup: processes %v, mounts %v", procs, mounts)
	}
	for _, p := range append(cgroups, c.Dir, filepath.Join("/run/containerd/runc", c.Namespace)) {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v)", p, err)
		}
	}
}

func TestConfig(t *testing.T) {
	c := &Containerd{
		Dir: "/tmp/ctd-1", Root: "/tmp/ctd-1/root", State: "/tmp/ctd-1/state", Address: "/tmp/ctd-1/c.sock",
		opts: Options{
			LogLevel: "debug",
			Runtimes: map[string]Runtime{"msb": {Type: "io.containerd.msb.v2", Options: map[string]any{"ConfigPath": "/etc/msb/config.toml"}}},
			Config:   "[plugins.'io.containerd.cri.v1.runtime'.containerd]\ndefault_runtime_name = 'msb'\n[grpc]\nmax_recv_message_size = 1024\n",
		},
	}
	b, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Version         int      `toml:"version"`
		Root            string   `toml:"root"`
		DisabledPlugins []string `toml:"disabled_plugins"`
		GRPC            struct {
			Address string `toml:"address"`
			MaxRecv int    `toml:"max_recv_message_size"`
		} `toml:"grpc"`
		TTRPC struct {
			Address string `toml:"address"`
		} `toml:"ttrpc"`
		Plugins map[string]map[string]any `toml:"plugins"`
	}
	if err := toml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("%v in\n%s", err, b)
	}
	if cfg.Version != 3 || cfg.Root != c.Root || cfg.GRPC.Address != c.Address || cfg.GRPC.MaxRecv != 1024 || cfg.TTRPC.Address != c.Address+".ttrpc" {
		t.Errorf("config:\n%s", b)
	}
	if !strings.Contains(strings.Join(cfg.DisabledPlugins, " "), "io.containerd.grpc.v1.cri") {
		t.Errorf("CRI not disabled:\n%s", b)
	}
	cri := cfg.Plugins["io.containerd.cri.v1.runtime"]["containerd"].(map[string]any)
	msb := cri["runtimes"].(map[string]any)["msb"].(map[string]any)
	if msb["runtime_type"] != "io.containerd.msb.v2" || cri["default_runtime_name"] != "msb" {
		t.Errorf("runtimes:\n%s", b)
	}
	if cfg.Plugins["io.containerd.internal.v1.opt"]["path"] != "/tmp/ctd-1/opt" {
		t.Errorf("opt path:\n%s", b)
	}
}

// mountsUnder reads mount points unescaped (mountinfo writes a space as
// \040, a backslash as \134).
func TestMountsUnderUnescapes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	mp := filepath.Join(dir, `a b\c`)
	if err := os.Mkdir(mp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mp, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mp, unix.MNT_DETACH)
	if got := mountsUnder(dir); len(got) != 1 || got[0] != mp {
		t.Fatalf("mountsUnder(%s) = %q, want [%q]", dir, got, mp)
	}
	if got := mountsUnder(filepath.Join(dir, "a")); len(got) != 0 {
		t.Fatalf("a prefix that is not a parent matched: %q", got)
	}
}
