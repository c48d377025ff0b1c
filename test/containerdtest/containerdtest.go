// Package containerdtest runs a real containerd for tests: its own root,
// state, socket and config, a ctr helper bound to it, a busybox image made
// locally (no registry needed), and a cleanup that leaves no process, mount
// or directory behind.
//
//	c := containerdtest.Start(t, containerdtest.Options{PathDirs: []string{shimDir}})
//	img := c.ImportBusybox()
//	out, _, err := c.Ctr("run", "--rm", "--runtime", "io.containerd.msb.v2", img, "t1", "uname", "-r")
//
// Binaries: containerd from $MSB_TEST_CONTAINERD (the binary or its
// directory), else PATH, else /var/cache/msb/bin (hack/build-containerd.sh);
// ctr from $MSB_TEST_CTR, else beside containerd, else PATH. Without them
// (or without root) Start skips the test, unless MSB_E2E=1, where it fails.
//
// containerd finds a shim `io.containerd.NAME.vN` as containerd-shim-NAME-vN
// on its PATH (then beside its own binary): Options.PathDirs come first on
// that PATH, so a test can run the shim it just built. `ctr run --runtime`
// names the shim directly; Options.Runtimes only matter to CRI.
package containerdtest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toml "github.com/pelletier/go-toml/v2"
)

// CacheBin is where hack/build-containerd.sh puts its binaries.
const CacheBin = "/var/cache/msb/bin"

// Options configure a test containerd. The zero value is a containerd
// without CRI, logging at info level, with a namespace of its own.
type Options struct {
	// Namespace that Ctr uses (default "msbtest-<unique>"). runc keeps its
	// state in /run/containerd/runc/<namespace> whatever containerd's state
	// dir is, so concurrent test containerds must not share a namespace.
	Namespace string
	// CRI keeps the CRI plugins enabled (and NRI, on a socket of its own).
	// Off by default: containerd starts faster and needs no CNI.
	CRI bool
	// Runtimes are CRI runtime handlers by name, written as
	// [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.NAME].
	Runtimes map[string]Runtime
	// Config is extra TOML (config version 3) merged over the generated
	// config, tables merged key by key.
	Config string
	// PathDirs go first on containerd's PATH, which its shims inherit.
	PathDirs []string
	// Env is added to containerd's environment (and so to its shims').
	Env []string
	// LogLevel of containerd: "debug", "info" (default), "warn", ...
	LogLevel string
	// StartTimeout bounds the wait for containerd's socket (default 30 s).
	StartTimeout time.Duration
	// CtrTimeout bounds each Ctr call (default 5 min: a VM boot under TCG is slow).
	CtrTimeout time.Duration
}

// Runtime is one CRI runtime handler.
type Runtime struct {
	Type    string         // runtime_type, e.g. io.containerd.msb.v2
	Options map[string]any // the handler's options table, if any
}

// Containerd is a running (or stopped) test containerd.
type Containerd struct {
	Dir        string // everything lives under here (a short /tmp path)
	Root       string // containerd's root (persistent data)
	State      string // containerd's state (runtime data, bundles, mounts)
	Address    string // gRPC socket
	ConfigPath string
	LogPath    string // containerd's stdout and stderr, appended across restarts
	Namespace  string
	Bin        string // containerd binary
	CtrBin     string // ctr binary

	t            testing.TB
	opts         Options
	env          []string
	ownNamespace bool // Namespace was made for this containerd

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	image   string        // imported busybox image name
	cleaned bool
}

// Find returns the containerd and ctr binaries the harness would use.
func Find() (containerdBin, ctrBin string, err error) {
	containerdBin, err = findContainerd()
	if err != nil {
		return "", "", err
	}
	if p := os.Getenv("MSB_TEST_CTR"); p != "" {
		ctrBin = p
	} else if p := filepath.Join(filepath.Dir(containerdBin), "ctr"); isExec(p) {
		ctrBin = p
	} else if ctrBin, err = exec.LookPath("ctr"); err != nil {
		return "", "", errors.New("ctr not found beside " + containerdBin + " nor on PATH")
	}
	if !isExec(ctrBin) {
		return "", "", errors.New(ctrBin + " is not an executable")
	}
	return containerdBin, ctrBin, nil
}

func findContainerd() (string, error) {
	if p := os.Getenv("MSB_TEST_CONTAINERD"); p != "" {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			p = filepath.Join(p, "containerd")
		}
		if !isExec(p) {
			return "", errors.New("MSB_TEST_CONTAINERD=" + os.Getenv("MSB_TEST_CONTAINERD") + ": no containerd executable there")
		}
		return p, nil
	}
	if p, err := exec.LookPath("containerd"); err == nil {
		return p, nil
	}
	if p := filepath.Join(CacheBin, "containerd"); isExec(p) {
		return p, nil
	}
	return "", errors.New("containerd not found ($MSB_TEST_CONTAINERD, PATH, " + CacheBin + "): run hack/build-containerd.sh or install.sh")
}

// LookPath finds name on the PATH a test containerd would get (with no
// Options.PathDirs): beside containerd, then CacheBin, then PATH and the
// sbin directories.
func LookPath(name string) (string, error) {
	cbin, err := findContainerd()
	if err != nil {
		return "", err
	}
	for _, d := range filepath.SplitList(searchPath(nil, cbin)) {
		if p := filepath.Join(d, name); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found beside %s, in %s or on PATH", name, cbin, CacheBin)
}

// Require skips the test (fails it with MSB_E2E=1) unless it runs as root
// and containerd, ctr and every named extra binary (looked up as LookPath
// does, e.g. "containerd-shim-runc-v2", "runc") are there.
func Require(t testing.TB, extra ...string) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "containerd tests need root"
	} else if _, _, err := Find(); err != nil {
		reason = err.Error()
	} else {
		for _, name := range extra {
			if _, err := LookPath(name); err != nil {
				reason = err.Error()
				break
			}
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("MSB_E2E") == "1" {
		t.Fatalf("MSB_E2E=1 but %s", reason)
	}
	t.Skip(reason)
}

// Start starts a containerd for the test and registers its cleanup. It
// skips the test when containerd is not there (see Require).
func Start(t testing.TB, opts Options) *Containerd {
	t.Helper()
	Require(t)
	cbin, ctrBin, err := Find()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/tmp", "ctd-") // short: unix socket paths have 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	own := false
	if opts.Namespace == "" {
		opts.Namespace = "msbtest-" + strings.TrimPrefix(filepath.Base(dir), "ctd-")
		own = true
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.CtrTimeout == 0 {
		opts.CtrTimeout = 5 * time.Minute
	}
	c := &Containerd{
		Dir:          dir,
		Root:         filepath.Join(dir, "root"),
		State:        filepath.Join(dir, "state"),
		Address:      filepath.Join(dir, "c.sock"),
		ConfigPath:   filepath.Join(dir, "config.toml"),
		LogPath:      filepath.Join(dir, "containerd.log"),
		Namespace:    opts.Namespace,
		Bin:          cbin,
		CtrBin:       ctrBin,
		t:            t,
		opts:         opts,
		ownNamespace: own,
	}
	t.Cleanup(c.cleanup)
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.ConfigPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	c.env = append(envWithout(os.Environ(), "PATH", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"),
		"PATH="+searchPath(opts.PathDirs, cbin))
	c.env = append(c.env, opts.Env...)
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	return c
}

// config renders the containerd config (version 3: containerd 2.0 to 2.3
// speak it natively, 2.4 migrates it to version 4 in memory at start).
func (c *Containerd) config() ([]byte, error) {
	cfg := map[string]any{
		"version": 3,
		"root":    c.Root,
		"state":   c.State,
		"temp":    filepath.Join(c.Dir, "tmp"),
		"grpc":    map[string]any{"address": c.Address},
		"ttrpc":   map[string]any{"address": c.Address + ".ttrpc"},
		"debug":   map[string]any{"level": c.opts.LogLevel},
		"plugins": map[string]any{
			// default /opt/containerd; its bin/ is put first on containerd's PATH
			"io.containerd.internal.v1.opt": map[string]any{"path": filepath.Join(c.Dir, "opt")},
		},
	}
	plugins := cfg["plugins"].(map[string]any)
	if c.opts.CRI {
		plugins["io.containerd.nri.v1.nri"] = map[string]any{"socket_path": filepath.Join(c.Dir, "nri.sock")}
	} else {
		cfg["disabled_plugins"] = []string{
			"io.containerd.grpc.v1.cri",
			"io.containerd.cri.v1.runtime",
			"io.containerd.cri.v1.images",
			"io.containerd.podsandbox.controller.v1.podsandbox",
			"io.containerd.nri.v1.nri",
		}
	}
	if len(c.opts.Runtimes) > 0 {
		runtimes := map[string]any{}
		for name, r := range c.opts.Runtimes {
			e := map[string]any{"runtime_type": r.Type}
			if len(r.Options) > 0 {
				e["options"] = r.Options
			}
			runtimes[name] = e
		}
		plugins["io.containerd.cri.v1.runtime"] = map[string]any{
			"containerd": map[string]any{"runtimes": runtimes},
		}
	}
	if c.opts.Config != "" {
		var extra map[string]any
		if err := toml.Unmarshal([]byte(c.opts.Config), &extra); err != nil {
			return nil, fmt.Errorf("containerdtest: Options.Config: %w", err)
		}
		merge(cfg, extra)
	}
	b, err := toml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return append([]byte("# written by msb test/containerdtest\n"), b...), nil
}

// merge merges src into dst, tables key by key, other values replaced.
func merge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

func (c *Containerd) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return errors.New("containerdtest: containerd already running")
	}
	_ = os.Remove(c.Address)
	logf, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "--- containerdtest: starting %s at %s\n", c.Bin, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(c.Bin, "--config", c.ConfigPath)
	cmd.Env = c.env
	cmd.Dir = c.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// its own process group (a ^C to go test does not hit it first) and
	// killed if the test process dies
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("containerdtest: start %s: %w", c.Bin, err)
	}
	logf.Close()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	c.cmd, c.done = cmd, done

	deadline := time.Now().Add(c.opts.StartTimeout)
	for {
		select {
		case <-done:
			c.cmd = nil
			return fmt.Errorf("containerdtest: containerd exited at start (%s); log %s:\n%s", cmd.ProcessState, c.LogPath, c.logTail(4096))
		default:
		}
		if conn, err := net.DialTimeout("unix", c.Address, time.Second); err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			c.cmd = nil
			return fmt.Errorf("containerdtest: containerd not serving on %s after %s; log:\n%s", c.Address, c.opts.StartTimeout, c.logTail(4096))
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Logf("containerdtest: containerd (pid %d) serving on %s after %s", cmd.Process.Pid, c.Address, time.Since(started).Round(time.Millisecond))
	return nil
}

// Running tells whether containerd is running.
func (c *Containerd) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cmd != nil
}

// Pid is containerd's pid (0 when stopped).
func (c *Containerd) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Stop stops containerd: SIGTERM, then SIGKILL after 15 s. Like a real
// containerd stop, running shims and their tasks stay.
func (c *Containerd) Stop() { c.stop(syscall.SIGTERM, 15*time.Second) }

// Kill kills containerd with SIGKILL (a crash); shims and tasks stay.
func (c *Containerd) Kill() { c.stop(syscall.SIGKILL, 0) }

func (c *Containerd) stop(sig syscall.Signal, grace time.Duration) {
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	if sig == syscall.SIGKILL {
		<-done
		return
	}
	select {
	case <-done:
	case <-time.After(grace):
		c.t.Logf("containerdtest: containerd did not stop on %s within %s: killing it", sig, grace)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// Restart stops containerd (if it runs) and starts it again with the same
// config, root and state: tasks started before stay reachable through their
// shims. It fails the test if containerd does not come back.
func (c *Containerd) Restart() {
	c.t.Helper()
	c.Stop()
	if err := c.start(); err != nil {
		c.t.Fatal(err)
	}
}

// Log returns containerd's log so far.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(c.LogPath)
	return string(b)
}

func (c *Containerd) logTail(n int) string {
	s := c.Log()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// Version is containerd's version (e.g. "v2.4.2").
func (c *Containerd) Version() string {
	out, err := exec.Command(c.Bin, "--version").Output()
	if err != nil {
		return ""
	}
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return ""
	}
	return f[2]
}

// searchPath is the PATH containerd gets: extra dirs, containerd's own
// directory, CacheBin, the caller's PATH, then the standard directories
// (runc often lives in an sbin directory a user's PATH lacks).
func searchPath(extra []string, containerdBin string) string {
	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		if d != "" && !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	for _, d := range extra {
		if abs, err := filepath.Abs(d); err == nil {
			add(abs)
		}
	}
	add(filepath.Dir(containerdBin))
	if fi, err := os.Stat(CacheBin); err == nil && fi.IsDir() {
		add(CacheBin)
	}
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		add(d)
	}
	for _, d := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		add(d)
	}
	return strings.Join(dirs, string(filepath.ListSeparator))
}

func envWithout(env []string, keys ...string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, key := range keys {
			if k == key {
				drop = true
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
