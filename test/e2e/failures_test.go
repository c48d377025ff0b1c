package e2e

// When a VM dies under its container, the shim names the cause in one log
// line and the exit status follows one rule: 137 when something killed
// the VM, 255 when the guest stopped by itself.

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestShimVMFailuresNamed(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	sysrq := func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		writableSysrq(s)
		return nil
	}
	for _, tc := range []struct {
		name, cmd, cause string
		status           uint32
		kill             func(t *testing.T, id string)
	}{
		{"panic", "sleep 1; echo c > /proc/sysrq-trigger", "guest kernel panic: Kernel panic - not syncing: sysrq triggered crash", 255, nil},
		{"poweroff", "sleep 1; echo o > /proc/sysrq-trigger", "the guest powered itself off", 255, nil},
		{"qemu-killed", "sleep 600", "the hypervisor was killed (signal: killed)", 137, func(t *testing.T, id string) {
			killChild(t, e.vmmPid(t, id), "qemu-system")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "fail-" + tc.name
			ctr := e.newContainer(t, c, id, oci.WithProcessArgs("sh", "-c", tc.cmd), sysrq)
			task, err := ctr.NewTask(ctx, cio.NullIO)
			if err != nil {
				t.Fatal(err)
			}
			exitC := waitAndStart(t, ctx, task)
			if tc.kill != nil {
				tc.kill(t, id)
			}
			st := waitExit(t, exitC, 2*time.Minute, id)
			if st.ExitCode() != tc.status {
				t.Errorf("exit status %d, want %d", st.ExitCode(), tc.status)
			}
			want := "VM " + id + " ended: " + tc.cause + ": exit status " + strconv.Itoa(int(tc.status))
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(e.Log(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("containerd log has no %q", want)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// killChild SIGKILLs the child of parent whose command starts with name.
func killChild(t *testing.T, parent int, name string) {
	t.Helper()
	if err := syscall.Kill(childNamed(t, parent, name), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// childNamed finds the child of parent whose command (comm) starts with
// name.
func childNamed(t *testing.T, parent int, name string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		rest := s[strings.LastIndexByte(s, ')')+2:]
		f := strings.Fields(rest)
		comm := s[strings.IndexByte(s, '(')+1 : strings.LastIndexByte(s, ')')]
		if len(f) > 1 && f[1] == strconv.Itoa(parent) && strings.HasPrefix(comm, name) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no %s child of %d", name, parent)
	return 0
}

// msb-runtime run names the cause too, and exits with the same rule.
func TestRuntimeRunVMEnded(t *testing.T) {
	requireVM(t)
	b := bundle(t, []string{"sh", "-c", "sleep 1; echo c > /proc/sysrq-trigger; sleep 60"}, writableSysrq)
	r := run(t, b, "")
	if r.code != 255 || !strings.Contains(r.stderr, "VM ended: guest kernel panic: Kernel panic - not syncing: sysrq triggered crash: exit status 255") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

// writableSysrq lets the container write /proc/sysrq-trigger (runc mounts
// it read-only unless told not to), to stop its guest as a crash or a
// halt would.
func writableSysrq(s *specs.Spec) {
	var ro []string
	for _, p := range s.Linux.ReadonlyPaths {
		if p != "/proc/sysrq-trigger" {
			ro = append(ro, p)
		}
	}
	s.Linux.ReadonlyPaths = ro
}

// The agent is the OOM killer's last choice (-1000, the VM dies with it);
// a container's processes, init and exec, get the spec's score: 0 when it
// names none, not the agent's inherited -1000.
func TestGuestOOMScores(t *testing.T) {
	e := startShimEnv(t)
	e.startDetached(t, "oomscore", "sleep", "600")
	t.Cleanup(func() { e.remove(t, "oomscore") })
	e.waitStatus(t, "oomscore", "RUNNING", 2*time.Minute)
	if out := e.MustCtr("task", "exec", "--exec-id", "s", "oomscore", "sh", "-c", "cat /proc/1/oom_score_adj /proc/self/oom_score_adj"); out != "0\n0\n" {
		t.Fatalf("oom_score_adj of init and exec: %q, want 0 and 0", out)
	}
}

// A container filling a tmpfs past the VM's memory: the OOM killer takes
// the writer, not the agent; the container exits 137 with a TaskOOM, and
// the VM still serves the pod's other container.
func TestGuestOOMFill(t *testing.T) {
	e := startShimEnv(t)
	const sb = "oomfill-sb"
	ann := func(typ string) []string {
		return []string{"--annotation", "io.kubernetes.cri.container-type=" + typ, "--annotation", "io.kubernetes.cri.sandbox-id=" + sb}
	}
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, ann("sandbox")...), e.image, sb, "sleep", "600")...)
	t.Cleanup(func() { e.remove(t, sb) })
	e.waitStatus(t, sb, "RUNNING", 2*time.Minute)
	events := e.recordTaskEvents(t)
	for _, limit := range []string{"", "128m"} {
		id := "oomfill" + strings.TrimSuffix(limit, "m")
		flags := append(ann("container"), "--mount", "type=tmpfs,destination=/fill,options=size=4g")
		if limit != "" {
			flags = append(flags, "--memory-limit", "134217728")
		}
		_, stderr, code, err := e.run(id, flags, "dd", "if=/dev/zero", "of=/fill/f", "bs=1M")
		if err != nil || code != 137 {
			t.Errorf("limit %q: exit %d, %v: %s", limit, code, err, stderr)
		}
		if out := e.MustCtr("task", "exec", "--exec-id", "alive-"+id, sb, "echo", "alive"); out != "alive\n" {
			t.Fatalf("limit %q: exec in the pod's sandbox after the OOM: %q", limit, out)
		}
		if got := events.wait(id, "/tasks/delete", 10*time.Second); !strings.Contains(got, "/tasks/oom /tasks/exit") {
			t.Errorf("limit %q: events %s; want /tasks/oom before /tasks/exit", limit, got)
		}
	}
}

// A guest flooding its console (here: sysrq task dumps, each tens of KiB,
// at console log level 9) leaves console.log within console_log_max_kib.
func TestConsoleLogCapped(t *testing.T) {
	requireVM(t)
	base, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, append(base, []byte("console_log_max_kib = 64\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	root := stateRoot(t)
	b := bundle(t, []string{"sh", "-c", "echo 9 > /proc/sysrq-trigger; for i in $(seq 40); do echo t > /proc/sysrq-trigger; done; sleep 2; echo flooded"}, writableSysrq)
	cmd := runtimeCmd(root, "--debug", "run", "--bundle", b, "flood")
	cmd.Env = append(cmd.Env, "MSB_CONFIG="+cfg)
	done := make(chan []byte, 1)
	go func() { out, _ := cmd.CombinedOutput(); done <- out }()
	// Read the log while the VM runs (the state dir goes with the run).
	var max int
	log := filepath.Join(root, "vms", "flood", "console.log")
	for {
		if st, err := os.Stat(log); err == nil && int(st.Size()) > max {
			max = int(st.Size())
		}
		select {
		case out := <-done:
			if !strings.Contains(string(out), "flooded") {
				t.Fatalf("run: %s", out)
			}
			if max < 32<<10 || max > 64<<10 {
				t.Fatalf("console.log peaked at %d bytes; want near the cap, 65536, never over (40 task dumps are far more)", max)
			}
			t.Logf("console.log peaked at %d bytes", max)
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// A create that containerd gives up on while the VM boots (its client's
// deadline passed, as CRI's RunPodSandbox timeout does) leaves no shim:
// containerd asks the shim to shut down while it is still tearing the VM
// down, and it must go once that is done.
func TestShimCancelledCreate(t *testing.T) {
	e := startShimEnv(t)
	c, _ := e.goClient(t)
	ctr := e.newContainer(t, c, "cancelled", oci.WithProcessArgs("sleep", "600"))
	// Well inside a boot: a ready agent takes about 1 s even with msb's
	// own kernel under TCG.
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	if _, err := ctr.NewTask(ctx, cio.NullIO); err == nil {
		t.Fatal("create finished within 400 ms: nothing was cancelled")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var shims []string
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			b, _ := os.ReadFile(p)
			if strings.Contains(string(b), "containerd-shim-msb-v2\x00") && strings.Contains(string(b), e.Address) {
				shims = append(shims, p)
			}
		}
		if len(shims) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("shim processes left 30 s after a cancelled create: %v", shims)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// The guest's user space reaches the console too: the agent's log lines
// land in console.log beside the kernel's (a kernel whose serial port has
// no usable IRQ prints its own messages but swallows every user-space
// write).
func TestConsoleLogHasAgentLines(t *testing.T) {
	requireVM(t)
	root := stateRoot(t)
	cmd := runtimeCmd(root, "run", "--bundle", bundle(t, []string{"sh", "-c", "sleep 3; echo done"}, nil), "agentlog")
	done := make(chan []byte, 1)
	go func() { out, _ := cmd.CombinedOutput(); done <- out }()
	log := filepath.Join(root, "vms", "agentlog", "console.log")
	var seen bool
	for {
		if b, err := os.ReadFile(log); err == nil && strings.Contains(string(b), "msb-agent: ") {
			seen = true
		}
		select {
		case out := <-done:
			if !strings.Contains(string(out), "done") {
				t.Fatalf("run: %s", out)
			}
			if !seen {
				t.Fatal("console.log never had a msb-agent line: the guest's user space cannot write to its console")
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}
