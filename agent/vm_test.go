//go:build vmsmoke

// The VM smoke test boots the real agent as guest PID 1 under qemu (TCG)
// and drives it over the virtio-serial channel: early init, module
// loading, switching off the initramfs root (pivot_root), cgroup v2 limits,
// Boot (9p share, tmpfs, hostname, rlimits, handoff), containers, exec, 16
// MiB of output, shutdown and power-off. It imports the host-side image
// builder, so it only builds with the tag:
//
//	go test -tags vmsmoke -run TestVM -v ./agent/
//
// Needs root, qemu-system-x86_64, a linux-image-*.deb (MSB_TEST_KERNEL_DEB
// or /var/cache/msb) and runc (see findRunc). About 15 s per boot.
package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/guest"
	"github.com/msb-dev/msb/mounts/bootenv"
	"github.com/msb-dev/msb/protocol"
)

func TestVM(t *testing.T) {
	for _, handoff := range []bool{false, true} {
		t.Run(fmt.Sprintf("handoff=%v", handoff), func(t *testing.T) { vmSmoke(t, handoff) })
	}
}

func vmSmoke(t *testing.T, handoff bool) {
	runcPath := findRunc(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	deb := os.Getenv("MSB_TEST_KERNEL_DEB")
	if deb == "" {
		m, _ := filepath.Glob("/var/cache/msb/linux-image-*.deb")
		if len(m) == 0 {
			t.Skip("no kernel package: set MSB_TEST_KERNEL_DEB")
		}
		sort.Strings(m)
		deb = m[len(m)-1]
	}
	rootfs := busyboxRootfs(t)
	dir := t.TempDir()
	agentBin := filepath.Join(dir, "msb-agent")
	build := exec.Command("go", "build", "-o", agentBin, "../cmd/msb-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	img, err := guest.Build(context.Background(), guest.Options{KernelDeb: deb, AgentPath: agentBin, RuntimePath: runcPath, OutDir: filepath.Join(dir, "img")})
	if err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(dir, "agent.sock")
	console := filepath.Join(dir, "console.log")
	q := exec.Command(qemu, "-machine", "microvm", "-accel", "tcg", "-cpu", "max",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-m", "512", "-smp", "2",
		"-kernel", img.Vmlinux, "-initrd", img.Initrd,
		"-append", "console=ttyS0 panic=-1 loglevel=4 tsc_early_khz="+strconv.Itoa(cpuKHz()),
		"-serial", "file:"+console,
		"-chardev", "socket,id=agent,path="+sock+",server=on,wait=off",
		"-device", "virtio-serial-device", "-device", "virtserialport,chardev=agent,name="+protocol.PortName,
		"-fsdev", "local,id=fs0,path="+rootfs+",security_model=none,readonly=on",
		"-device", "virtio-9p-device,fsdev=fs0,mount_tag=rootfs0")
	out := &syncBuffer{}
	q.Stdout, q.Stderr = out, out
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	qdone := make(chan error, 1)
	go func() { qdone <- q.Wait() }()
	defer func() {
		q.Process.Kill()
		<-qdone
		if t.Failed() {
			c, _ := os.ReadFile(console)
			t.Logf("qemu: %s\nconsole:\n%s", out.String(), c)
		}
	}()
	var conn net.Conn
	for i := 0; i < 100; i++ {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(conn, protocol.MuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	open := func(kind, arg string) *yamux.Stream {
		s, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if err := protocol.WriteHeader(s, kind, arg); err != nil {
			t.Fatal(err)
		}
		return s
	}
	tc := ttrpc.NewClient(open(protocol.KindTTRPC, ""))
	ac := protocol.NewAgentClient(tc)
	tasks := task.NewTTRPCTaskClient(tc)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if s, err := ac.Status(ctx); err != nil || s != "waiting for boot" {
		t.Fatalf("status %q, %v", s, err)
	}
	e := bootenv.Env{
		DirMounts: []bootenv.DirMount{{Tag: "rootfs0", GuestPath: "/run/msb/rootfs", ReadOnly: true}},
		Tmpfs:     []bootenv.Tmpfs{{GuestPath: "/run/msb/scratch", SizeBytes: 1 << 20}},
		Hostname:  "vm-smoke",
		Rlimits:   []bootenv.Rlimit{{Resource: 7, Soft: 4096, Hard: 8192}},
	}
	if handoff {
		e.HandoffInit = "/bin/sh"
		e.HandoffInitArgs = []string{"sh", "-c", "echo HANDOFF-OK pid=$$; exec sleep 100000"}
	}
	env, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := ac.Boot(ctx, env); err != nil {
		t.Fatal(err)
	}
	waitCh := make(chan int32, 1)
	go func() { c, _ := ac.WaitShutdown(context.Background()); waitCh <- c }()

	mem := int64(64 << 20)
	spec := testSpec("/run/msb/rootfs", "sh", "-c", "hostname; id -u; cat /sys/fs/cgroup/memory.max; ulimit -n; exit 42")
	spec.Hostname = ""
	spec.Process.Rlimits = nil
	spec.Process.User = specs.User{UID: 65534, GID: 65534}
	spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &mem}
	spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace},
		{Type: specs.MountNamespace}, {Type: specs.CgroupNamespace}, {Type: specs.NetworkNamespace}}
	o1 := open(protocol.KindStdio, "o1")
	if _, err := tasks.Create(ctx, &task.CreateTaskRequest{ID: "c1", Stdout: protocol.StreamURI("o1"), Options: specAny(t, spec)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tasks.Start(ctx, &task.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	w, err := tasks.Wait(ctx, &task.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 42 {
		t.Fatalf("wait %v, %v", w, err)
	}
	if got := string(readNow(t, o1)); got != "vm-smoke\n65534\n67108864\n4096\n" {
		t.Errorf("container output %q", got)
	}
	if _, err := tasks.Delete(ctx, &task.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}

	spec.Process.Args = []string{"sleep", "1000"}
	if _, err := tasks.Create(ctx, &task.CreateTaskRequest{ID: "c2", Options: specAny(t, spec)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tasks.Start(ctx, &task.StartRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	p := *spec.Process
	p.Args = []string{"sh", "-c", "yes 0123456789abcdef | head -c 16777216"}
	o2 := open(protocol.KindStdio, "o2")
	if _, err := tasks.Exec(ctx, &task.ExecProcessRequest{ID: "c2", ExecID: "x", Stdout: protocol.StreamURI("o2"), Spec: processAny(t, &p)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := tasks.Start(ctx, &task.StartRequest{ID: "c2", ExecID: "x"}); err != nil {
		t.Fatal(err)
	}
	got := readAll(o2)
	if w, err := tasks.Wait(ctx, &task.WaitRequest{ID: "c2", ExecID: "x"}); err != nil || w.ExitStatus != 0 {
		t.Fatalf("exec wait %v, %v", w, err)
	}
	b := recv(t, got)
	want := bytes.Repeat([]byte("0123456789abcdef\n"), 16777216/17+1)[:16777216]
	if !bytes.Equal(b, want) {
		t.Errorf("16 MiB exec output: got %d bytes, not intact", len(b))
	}
	t.Logf("16 MiB through the guest channel in %v (TCG)", time.Since(start).Round(time.Millisecond))

	if err := ac.Shutdown(ctx, 3); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-waitCh:
		if c != 3 {
			t.Errorf("WaitShutdown = %d", c)
		}
	case <-time.After(10 * time.Second):
		t.Error("WaitShutdown not released")
	}
	select {
	case err := <-qdone:
		qdone <- err
		if err != nil {
			t.Errorf("qemu: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("the guest did not power off")
	}
	c, _ := os.ReadFile(console)
	if strings.Contains(string(c), "no-pivot") || strings.Contains(string(c), "level=error") {
		t.Errorf("console has errors:\n%s", c)
	}
	if handoff && !strings.Contains(string(c), "HANDOFF-OK pid=1") {
		t.Errorf("handoff init did not run as PID 1:\n%s", c)
	}
}

// cpuKHz is the TSC frequency for tsc_early_khz (TCG calibrates slowly).
func cpuKHz() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f * 1000)
		}
	}
	return 2000000
}
