package vmmproc

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"

	"github.com/msb-dev/msb/kvmprobe"
	"github.com/msb-dev/msb/mounts/bootenv"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
	"github.com/msb-dev/msb/vmmproc/libkrun"
)

// Environment of the "real" VMM mode of the test binary (see TestMain).
const testKVMEnv = "MSB_TEST_KVM_DEVICE"

// realVMM is the real VMM process (Main) with the KVM device taken from
// the environment, so tests choose whether KVM "works".
func realVMM() int {
	if d := os.Getenv(testKVMEnv); d != "" {
		kvmprobe.Device = d
	}
	return Main(MainOptions{})
}

// buildStub compiles testdata/krunstub into dir/libkrun.so.1 with the
// given -D defines and returns its path.
func buildStub(t *testing.T, defines ...string) string {
	t.Helper()
	if !libkrun.Loadable {
		t.Skip("built with CGO_ENABLED=0: libkrun cannot be loaded")
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: the libkrun stub cannot be built")
	}
	out := filepath.Join(t.TempDir(), LibkrunSoname)
	args := []string{"-shared", "-fPIC", "-Wall", "-Werror", "-o", out}
	for _, d := range defines {
		args = append(args, "-D"+d)
	}
	args = append(args, filepath.Join("testdata", "krunstub", "krunstub.c"))
	if b, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		t.Fatalf("build krunstub: %v\n%s", err, b)
	}
	return out
}

// fakeKVM makes a file the VMM process opens read-write as its KVM device.
func fakeKVM(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// krunTest is one VMM process run against the stub.
type krunTest struct {
	cfg     *vmm.LaunchConfig
	callLog string
	vmmLog  string
	dir     string
}

// newKrunTest builds a representative launch config: a rw rootfs share, a
// ro share, a single-file mount (a staged directory, ro), a raw and a ro
// qcow2 disk, rlimits, hostname and user in the boot env, 2 vcpus, 512 MiB.
func newKrunTest(t *testing.T, lib string) *krunTest {
	dir := t.TempDir()
	env, err := bootenv.Env{
		DirMounts:  []bootenv.DirMount{{Tag: "rootfs", GuestPath: "/run/msb/rootfs"}, {Tag: "data", GuestPath: "/run/msb/v/data", ReadOnly: true}},
		FileMounts: []bootenv.FileMount{{Tag: "file-1", Name: "resolv.conf", GuestPath: "/run/msb/f/1", ReadOnly: true}},
		DiskMounts: []bootenv.DiskMount{{Tag: "disk-0", GuestPath: "/run/msb/d/0", FSType: "ext4"}},
		Rlimits:    []bootenv.Rlimit{{Resource: 7, Soft: 1024, Hard: 4096}, {Resource: 4, Soft: 0, Hard: bootenv.RlimInfinity}},
		Hostname:   "web-1",
		User:       "1000:1000",
	}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &vmm.LaunchConfig{
		Version: vmm.ConfigVersion, Name: "k1", Backend: vmm.BackendLibkrun, RuntimeDir: dir,
		AgentSocket: filepath.Join(dir, "agent", "a.sock"), ConsoleLog: filepath.Join(dir, "console.log"),
		VCPUs: 2, MemoryMiB: 512, GuestRoot: filepath.Join(dir, "guestroot"), Libkrun: lib,
		Shares: []vmm.Share{
			{Tag: "rootfs", Path: filepath.Join(dir, "rootfs")},
			{Tag: "data", Path: filepath.Join(dir, "data"), ReadOnly: true},
			{Tag: "file-1", Path: filepath.Join(dir, "files", "1"), ReadOnly: true},
		},
		Disks: []vmm.Disk{
			{Tag: "disk-0", Path: filepath.Join(dir, "d0.img"), Format: "raw"},
			{Tag: "disk-1", Path: filepath.Join(dir, "d1.qcow2"), Format: "qcow2", ReadOnly: true},
		},
		Env:           env,
		ShutdownGrace: vmm.Duration(3 * time.Second),
		BootTimeout:   vmm.Duration(20 * time.Second),
	}
	return &krunTest{cfg: cfg, callLog: filepath.Join(dir, "calls"), vmmLog: filepath.Join(dir, "vmm.log"), dir: dir}
}

// spawn runs the real VMM process (the test binary in mode "real").
func (k *krunTest) spawn(t *testing.T, kvm string, env ...string) (*vmm.Handle, error) {
	t.Setenv("MSB_FAKE_VMM", "real")
	t.Setenv(testKVMEnv, kvm)
	t.Setenv("KRUNSTUB_LOG", k.callLog)
	for _, kv := range env {
		key, val, _ := strings.Cut(kv, "=")
		t.Setenv(key, val)
	}
	return vmm.Spawn(k.cfg, vmm.SpawnOptions{Binary: os.Args[0], Log: k.vmmLog, StartupTimeout: 10 * time.Second})
}

func (k *krunTest) calls(t *testing.T) []string {
	b, err := os.ReadFile(k.callLog)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func (k *krunTest) log(t *testing.T) string {
	b, _ := os.ReadFile(k.vmmLog)
	return string(b)
}

// wantCalls is the exact call sequence for newKrunTest's config with a
// libkrun that has krun_add_virtiofs3.
func (k *krunTest) wantCalls() []string {
	d := k.dir
	return []string{
		"krun_set_log_level 2",
		"krun_create_ctx",
		"krun_set_vm_config 7 2 512",
		`krun_add_virtiofs3 7 "/dev/root" "` + d + `/guestroot" 0 1`,
		`krun_add_virtiofs 7 "rootfs" "` + d + `/rootfs"`,
		`krun_add_virtiofs3 7 "data" "` + d + `/data" 0 1`,
		`krun_add_virtiofs3 7 "file-1" "` + d + `/files/1" 0 1`,
		`krun_add_disk2 7 "disk-0" "` + d + `/d0.img" 0 0`,
		`krun_add_disk2 7 "disk-1" "` + d + `/d1.qcow2" 1 1`,
		"krun_disable_implicit_vsock 7",
		"krun_add_vsock 7 0",
		`krun_add_vsock_port2 7 1024 "` + vmm.ChannelSocket(k.cfg) + `" 0`,
		`krun_set_exec 7 "/init" [] []`,
		// Never the boot env: krun_set_env is the guest's kernel command line.
		`krun_set_env 7 ["MSB_CHANNEL=vsock", "KRUN_INIT_PID1=1"]`,
		`krun_set_rlimits 7 ["7=1024:4096", "4=0:18446744073709551615"]`,
		`krun_set_workdir 7 "/"`,
		`krun_set_console_output 7 "` + d + `/console.log"`,
		"krun_start_enter 7",
	}
}

func diffCalls(t *testing.T, got, want []string) {
	t.Helper()
	n := max(len(got), len(want))
	for i := 0; i < n; i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("call %d:\n got  %s\n want %s", i, g, w)
		}
	}
}

// TestLibkrunCallSequence runs the VMM process against the stub and checks
// every krun_* call and its arguments, and that krun_start_enter's exit
// status comes back through vmm.Handle.Wait.
func TestLibkrunCallSequence(t *testing.T) {
	k := newKrunTest(t, buildStub(t))
	h, err := k.spawn(t, fakeKVM(t), "KRUNSTUB_EXIT=42")
	if err != nil {
		t.Fatalf("%v\nvmm.log:\n%s", err, k.log(t))
	}
	code, err := h.Wait()
	if err != nil || code != 42 {
		t.Fatalf("exit = %d, %v; want 42\nvmm.log:\n%s", code, err, k.log(t))
	}
	diffCalls(t, k.calls(t), k.wantCalls())
	if !strings.Contains(k.log(t), "backend libkrun: "+k.cfg.Libkrun+", API >= 1.18") {
		t.Errorf("vmm.log does not report the API level:\n%s", k.log(t))
	}
	for _, p := range []string{k.cfg.AgentSocket, vmm.ChannelSocket(k.cfg)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind after libkrun exited", p)
		}
	}
}

// TestLibkrunOldVersion: a libkrun without the 1.10 calls is refused with
// the version it needs, before any VM call.
func TestLibkrunOldVersion(t *testing.T) {
	k := newKrunTest(t, buildStub(t, "KRUNSTUB_OLD"))
	_, err := k.spawn(t, fakeKVM(t))
	if err == nil {
		t.Fatal("VMM started with a libkrun older than 1.10")
	}
	log := k.log(t)
	if !strings.Contains(log, "lacks krun_add_disk2 (added in libkrun 1.10)") || !strings.Contains(log, "needs libkrun >= 1.10") {
		t.Fatalf("vmm.log does not name the missing call and version:\n%s", log)
	}
	if c := k.calls(t); len(c) != 1 || c[0] != "" {
		t.Fatalf("libkrun was called: %q", c)
	}
}

// TestLibkrunCallFails: a call returning -EINVAL fails the start with an
// error naming the call and errno, and nothing after it is called.
func TestLibkrunCallFails(t *testing.T) {
	k := newKrunTest(t, buildStub(t))
	_, err := k.spawn(t, fakeKVM(t), "KRUNSTUB_FAIL=krun_add_disk2", "KRUNSTUB_EXIT=0")
	if err == nil {
		t.Fatal("VMM started although krun_add_disk2 failed")
	}
	if log := k.log(t); !strings.Contains(log, "libkrun krun_add_disk2 failed for disk disk-0 ("+k.dir+"/d0.img, raw): invalid argument (errno 22)") {
		t.Fatalf("vmm.log does not name the failed call:\n%s", log)
	}
	diffCalls(t, k.calls(t), k.wantCalls()[:8])
}

// TestAutoFallsBackWithoutKVM: auto with a loadable libkrun but no usable
// KVM device takes qemu and says so in the VMM log.
func TestAutoFallsBackWithoutKVM(t *testing.T) {
	k := newKrunTest(t, buildStub(t))
	k.cfg.Backend = vmm.BackendAuto
	k.cfg.Kernel = "/k"
	k.cfg.QEMU = filepath.Join(k.dir, "no-qemu")
	_, err := k.spawn(t, filepath.Join(k.dir, "no-kvm"))
	if err == nil {
		t.Fatal("VMM started with a qemu that does not exist")
	}
	log := k.log(t)
	if !strings.Contains(log, "backend auto: using qemu under TCG: "+filepath.Join(k.dir, "no-kvm")+" is not usable read-write") {
		t.Fatalf("vmm.log does not explain the fallback:\n%s", log)
	}
	if !strings.Contains(log, "start "+k.cfg.QEMU) {
		t.Fatalf("qemu was not tried:\n%s", log)
	}
	if c := k.calls(t); len(c) != 1 || c[0] != "" {
		t.Fatalf("libkrun was called: %q", c)
	}
}

// TestSelectBackend covers the in-process choices.
func TestSelectBackend(t *testing.T) {
	stub := buildStub(t)
	noRO, withTSI := buildStub(t, "KRUNSTUB_NO_VIRTIOFS3"), buildStub(t, "KRUNSTUB_NO_NOTSI")
	old := kvmprobe.Device
	t.Cleanup(func() { kvmprobe.Device = old })
	cases := []struct {
		name, backend, lib, kvm, guestRoot string
		want, log, err                     string
	}{
		{"auto picks libkrun", "auto", stub, fakeKVM(t), "/gr", "libkrun", "backend auto: using libkrun " + stub + ", API >= 1.18", ""},
		{"auto without guest root", "auto", stub, fakeKVM(t), "", "qemu", "no libkrun guest root", ""},
		{"auto without read-only virtio-fs", "auto", noRO, fakeKVM(t), "/gr", "qemu",
			"backend auto: using qemu: libkrun " + noRO + " is too old to isolate a VM: it lacks krun_add_virtiofs3", ""},
		{"auto with TSI", "auto", withTSI, fakeKVM(t), "/gr", "qemu",
			"backend auto: using qemu: libkrun " + withTSI + " is too old to isolate a VM: it lacks krun_disable_implicit_vsock", ""},
		{"libkrun with TSI", "libkrun", withTSI, fakeKVM(t), "/gr", "", "",
			"backend libkrun: libkrun " + withTSI + " is too old to isolate a VM: it lacks krun_disable_implicit_vsock"},
		{"auto without libkrun", "auto", "/nonexistent/libkrun.so.1", fakeKVM(t), "/gr", "qemu", "backend auto: using qemu: libkrun is not available", ""},
		{"qemu", "qemu", stub, fakeKVM(t), "/gr", "qemu", "", ""},
		{"libkrun missing", "libkrun", "/nonexistent/libkrun.so.1", fakeKVM(t), "/gr", "", "",
			"backend libkrun: libkrun is not available (dlopen /nonexistent/libkrun.so.1"},
		{"libkrun without kvm", "libkrun", stub, "/nonexistent/kvm", "/gr", "", "", "backend libkrun needs /nonexistent/kvm read-write"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kvmprobe.Device = c.kvm
			var logs []string
			logf := func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
			cfg := &vmm.LaunchConfig{Backend: c.backend, Libkrun: c.lib, GuestRoot: c.guestRoot}
			got, lib, err := selectBackend(cfg, logf)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v; want %q", err, c.err)
				}
				if c.backend == "libkrun" && strings.Contains(c.err, "dlopen") && !strings.Contains(err.Error(), "install libkrun and libkrunfw") {
					t.Fatalf("err does not say what to install: %v", err)
				}
				return
			}
			if err != nil || got != c.want || (got == vmm.BackendLibkrun) != (lib != nil) {
				t.Fatalf("got %q, lib %v, err %v; want %q", got, lib != nil, err, c.want)
			}
			if all := strings.Join(logs, "\n"); !strings.Contains(all, c.log) {
				t.Fatalf("log %q lacks %q", all, c.log)
			}
		})
	}
}

// TestLibkrunWithoutIsolation: a libkrun without read-only virtio-fs or
// without a TSI-free vsock is refused for backend libkrun, with the call
// it lacks and what to upgrade, before any VM call.
func TestLibkrunWithoutIsolation(t *testing.T) {
	for define, call := range map[string]string{
		"KRUNSTUB_NO_VIRTIOFS3": "krun_add_virtiofs3 (libkrun >= 1.18)",
		"KRUNSTUB_NO_NOTSI":     "krun_disable_implicit_vsock (a current libkrun)",
	} {
		t.Run(define, func(t *testing.T) {
			k := newKrunTest(t, buildStub(t, define))
			if _, err := k.spawn(t, fakeKVM(t)); err == nil {
				t.Fatal("VMM started with a libkrun that cannot isolate the VM")
			}
			log := k.log(t)
			if !strings.Contains(log, "backend libkrun: libkrun "+k.cfg.Libkrun+" is too old to isolate a VM: it lacks "+call) ||
				!strings.Contains(log, "upgrade libkrun and libkrunfw") {
				t.Fatalf("vmm.log does not name the missing call and the upgrade:\n%s", log)
			}
			if c := k.calls(t); len(c) != 1 || c[0] != "" {
				t.Fatalf("libkrun was called: %q", c)
			}
		})
	}
}

// fakeGuest plays the guest side of the agent channel: it dials the VMM's
// channel socket (as libkrun's vsock proxy would) and serves the Agent
// service. Shutdown(code) answers WaitShutdown with code and then lets the
// stub's krun_start_enter exit with libkrunCode.
type fakeGuest struct {
	mu       sync.Mutex
	booted   []string
	shutdown chan int32
	exitFile string
	krunCode int
}

func (g *fakeGuest) Boot(_ context.Context, env []string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.booted = env
	return nil
}

func (g *fakeGuest) Status(context.Context) (string, error) { return "booted fake", nil }

func (g *fakeGuest) Shutdown(_ context.Context, code int32) error {
	g.shutdown <- code
	go func() {
		time.Sleep(50 * time.Millisecond) // the reset comes after the reply
		_ = os.WriteFile(g.exitFile, fmt.Appendf(nil, "%d\n", g.krunCode), 0o600)
	}()
	return nil
}

func (g *fakeGuest) WaitShutdown(ctx context.Context) (int32, error) {
	select {
	case c := <-g.shutdown:
		return c, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// streamListener hands yamux streams to a ttrpc server.
type streamListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *streamListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *streamListener) Addr() net.Addr { return &net.UnixAddr{Name: "guest", Net: "unix"} }

func (g *fakeGuest) serve(t *testing.T, chanSock string) {
	conn, err := net.Dial("unix", chanSock)
	if err != nil {
		t.Errorf("guest: dial %s: %v", chanSock, err)
		return
	}
	sess, err := yamux.Server(conn, protocol.MuxConfig())
	if err != nil {
		t.Errorf("guest: mux: %v", err)
		return
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Errorf("guest: ttrpc: %v", err)
		return
	}
	protocol.RegisterAgent(srv, g)
	l := &streamListener{ch: make(chan net.Conn), done: make(chan struct{})}
	go func() { _ = srv.Serve(context.Background(), l) }()
	for {
		s, err := sess.Accept()
		if err != nil {
			l.Close()
			return
		}
		go func() {
			if kind, _, err := protocol.ReadHeader(s); err != nil || kind != protocol.KindTTRPC {
				s.Close()
				return
			}
			select {
			case l.ch <- s:
			case <-l.done:
			}
		}()
	}
}

// TestLibkrunGuestShutdown runs a VM whose guest connects over the channel
// socket: the boot env travels with the Agent Boot call, the
// relay reaches the agent, and when the creator lets go the VMM asks the
// guest to shut down and exits with the code the agent announced, not the
// one libkrun exits with.
func TestLibkrunGuestShutdown(t *testing.T) {
	k := newKrunTest(t, buildStub(t))
	exitFile := filepath.Join(k.dir, "exit")
	g := &fakeGuest{shutdown: make(chan int32, 1), exitFile: exitFile, krunCode: 0}
	h, err := k.spawn(t, fakeKVM(t), "KRUNSTUB_EXIT_FILE="+exitFile)
	if err != nil {
		t.Fatalf("%v\nvmm.log:\n%s", err, k.log(t))
	}
	defer h.Kill()
	go g.serve(t, vmm.ChannelSocket(k.cfg))

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := vmm.DialTTRPC(ctx, k.cfg.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := protocol.NewAgentClient(c).Status(ctx)
	c.Close()
	if err != nil || st != "booted fake" {
		t.Fatalf("status through the relay = %q, %v\nvmm.log:\n%s", st, err, k.log(t))
	}
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
	code, err := h.Wait()
	if err != nil || code != vmm.ExitKilled {
		t.Fatalf("exit = %d, %v; want %d\nvmm.log:\n%s", code, err, vmm.ExitKilled, k.log(t))
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if strings.Join(g.booted, " ") != strings.Join(k.cfg.Env, " ") {
		t.Errorf("Boot got %q, want the boot env %q", g.booted, k.cfg.Env)
	}
	if _, err := os.Stat(k.cfg.AgentSocket); err == nil {
		t.Error("agent socket left behind")
	}
	if strings.Contains(k.log(t), "DATA RACE") {
		t.Errorf("the VMM process raced (go test -race):\n%s", k.log(t))
	}
}

// TestLibkrunStartEnterFails: krun_start_enter returning -EINVAL (after the
// startup line) ends the VMM with status 1 and a log naming the call.
func TestLibkrunStartEnterFails(t *testing.T) {
	k := newKrunTest(t, buildStub(t))
	h, err := k.spawn(t, fakeKVM(t), "KRUNSTUB_FAIL=krun_start_enter")
	if err != nil {
		t.Fatalf("%v\nvmm.log:\n%s", err, k.log(t))
	}
	if code, err := h.Wait(); err != nil || code != 1 {
		t.Fatalf("exit = %d, %v; want 1", code, err)
	}
	if log := k.log(t); !strings.Contains(log, "libkrun krun_start_enter failed: invalid argument (errno 22)") {
		t.Fatalf("vmm.log does not name krun_start_enter:\n%s", log)
	}
}
