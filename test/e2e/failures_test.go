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
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no %s child of %d", name, parent)
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
