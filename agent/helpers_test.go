package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/msb-dev/msb/agent"
	agenttask "github.com/msb-dev/msb/agent/task"
	"github.com/msb-dev/msb/protocol"
)

// The agent under test runs in a child process (this test binary again, in
// TestMain) with its own UTS and mount namespaces, so Boot's hostname and
// mounts do not touch the host, and the agent reaps its children the way it
// does in the guest, as a subreaper.
const (
	helperEnv      = "MSB_AGENT_TEST_HELPER"
	helperRuncRoot = "MSB_AGENT_TEST_RUNC_ROOT"
	helperBundles  = "MSB_AGENT_TEST_BUNDLES"
	helperRunc     = "MSB_AGENT_TEST_RUNC"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helperMain())
	}
	code := m.Run()
	if rootfsDir != "" {
		os.RemoveAll(filepath.Dir(rootfsDir))
	}
	os.Exit(code)
}

func helperMain() int {
	agent.SetupLogging()
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintln(os.Stderr, "helper: make / private:", err)
		return 1
	}
	f := os.NewFile(3, "channel")
	conn, err := net.FileConn(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	f.Close()
	err = agent.Serve(context.Background(), conn, agent.Options{Options: agenttask.Options{
		RuntimePath:    os.Getenv(helperRunc),
		RuntimeRoot:    os.Getenv(helperRuncRoot),
		BundleRoot:     os.Getenv(helperBundles),
		StdioWait:      2 * time.Second,
		IODrainTimeout: 2 * time.Second,
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// findRunc returns the runc for the tests or skips.
func findRunc(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("agent tests run containers with runc: they need root")
	}
	cands := []string{os.Getenv("MSB_TEST_RUNC")}
	if cands[0] == "" {
		cands = []string{"/var/cache/msb/runc", "/var/cache/msb/bin/runc"}
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if fi, err := os.Stat(c); err == nil && fi.Mode()&0o111 != 0 {
			return c
		}
	}
	msg := fmt.Sprintf("no runc for the agent tests: set MSB_TEST_RUNC (build one with hack/build-runc.sh /var/cache/msb); tried %v", cands)
	if os.Getenv("MSB_E2E") == "1" {
		t.Fatal(msg) // CI installed runc: a skip here would hide a broken install
	}
	t.Skip(msg)
	return ""
}

var (
	rootfsOnce sync.Once
	rootfsDir  string
	rootfsErr  error
)

// busyboxRootfs builds (once per test binary) a rootfs with a static
// busybox and a symlink per applet.
func busyboxRootfs(t *testing.T) string {
	t.Helper()
	rootfsOnce.Do(func() {
		bb, err := exec.LookPath("busybox")
		if err != nil {
			rootfsErr = fmt.Errorf("busybox not found (apt-get install busybox-static): %w", err)
			return
		}
		out, err := exec.Command(bb, "--list").Output()
		if err != nil {
			rootfsErr = fmt.Errorf("busybox --list: %w", err)
			return
		}
		dir, err := os.MkdirTemp("", "msb-agent-rootfs-")
		if err != nil {
			rootfsErr = err
			return
		}
		root := filepath.Join(dir, "rootfs")
		for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc", "root"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				rootfsErr = err
				return
			}
		}
		data, err := os.ReadFile(bb)
		if err != nil {
			rootfsErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), data, 0o755); err != nil {
			rootfsErr = err
			return
		}
		for _, app := range strings.Fields(string(out)) {
			if app == "busybox" {
				continue
			}
			_ = os.Symlink("busybox", filepath.Join(root, "bin", app))
		}
		_ = os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"), 0o644)
		_ = os.WriteFile(filepath.Join(root, "etc", "group"), []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644)
		rootfsDir = root
	})
	if rootfsErr != nil {
		t.Skip(rootfsErr)
	}
	return rootfsDir
}

// testSpec is the spec `runc spec` writes, with rootfs, args and no
// terminal.
func testSpec(rootfs string, args ...string) *specs.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: rootfs, Readonly: true},
		Process: &specs.Process{
			Args:            args,
			Env:             []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"},
			Cwd:             "/",
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Permitted: caps, Effective: caps},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Hostname: "runc",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Resources:     &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
		},
	}
}

func specAny(t *testing.T, s *specs.Spec) *anypb.Any {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: protocol.GuestSpecTypeURL, Value: b}
}

func processAny(t *testing.T, p *specs.Process) *anypb.Any {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: protocol.ProcessSpecTypeURL, Value: b}
}

// env is one running agent and a client session to it.
type env struct {
	t      *testing.T
	rootfs string
	sess   *yamux.Session
	tasks  task.TTRPCTaskService
	agent  *protocol.AgentClient
	pid    int // the agent's
	log    *syncBuffer
	nextID int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startAgent starts the agent in a helper process and connects to it.
func startAgent(t *testing.T) *env {
	t.Helper()
	runcPath := findRunc(t)
	rootfs := busyboxRootfs(t)
	dir := t.TempDir()

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "mine"), os.NewFile(uintptr(fds[1]), "theirs")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperRunc+"="+runcPath,
		helperRuncRoot+"="+filepath.Join(dir, "runc"), helperBundles+"="+filepath.Join(dir, "bundles"))
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUTS | unix.CLONE_NEWNS, Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	conn, err := net.FileConn(mine)
	if err != nil {
		t.Fatal(err)
	}
	mine.Close()
	sess, err := yamux.Client(conn, protocol.MuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, rootfs: rootfs, sess: sess, pid: cmd.Process.Pid, log: logs}
	tc := ttrpc.NewClient(e.stream(protocol.KindTTRPC, ""))
	e.tasks = task.NewTTRPCTaskClient(tc)
	e.agent = protocol.NewAgentClient(tc)
	t.Cleanup(func() {
		tc.Close()
		sess.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent helper: %v", err)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Errorf("agent helper did not exit after the channel closed")
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	return e
}

// stream opens a yamux stream with a header.
func (e *env) stream(kind, arg string) *yamux.Stream {
	e.t.Helper()
	s, err := e.sess.OpenStream()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := protocol.WriteHeader(s, kind, arg); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// stdio opens a stdio stream and returns it with its URI.
func (e *env) stdio() (*yamux.Stream, string) {
	e.nextID++
	tok := fmt.Sprintf("%s-%d-%d", strings.ReplaceAll(e.t.Name(), "/", "_"), e.nextID, time.Now().UnixNano())
	return e.stream(protocol.KindStdio, tok), protocol.StreamURI(tok)
}

func (e *env) id() string {
	e.nextID++
	return fmt.Sprintf("t%d-%d", os.Getpid(), e.nextID)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// readAll reads r to EOF in the background.
func readAll(r io.Reader) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		ch <- b
	}()
	return ch
}

func recv(t *testing.T, ch <-chan []byte) []byte {
	t.Helper()
	select {
	case b := <-ch:
		return b
	case <-time.After(30 * time.Second):
		t.Fatal("stream not closed within 30s")
		return nil
	}
}
