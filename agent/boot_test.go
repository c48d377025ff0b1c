package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
)

// The msb Agent service over the wire: Boot (mounts, hostname, rlimits)
// and Shutdown.

func TestBootTmpfsHostnameRlimits(t *testing.T) {
	e := startAgent(t)
	ctx := ctxT(t)
	if s, err := e.agent.Status(ctx); err != nil || s != "waiting for boot" {
		t.Fatalf("status before boot = %q, %v", s, err)
	}
	mnt := filepath.Join(t.TempDir(), "scratch")
	env := []string{
		"MSB_HOSTNAME=msb-test-host",
		"MSB_TMPFS=" + mnt + ":size=1048576,mode=0700,nodev",
		"MSB_RLIMITS=7=1000:2000",
		"OTHER=ignored",
	}
	if err := e.agent.Boot(ctx, env); err != nil {
		t.Fatal(err)
	}
	s, err := e.agent.Status(ctx)
	if err != nil || !strings.HasPrefix(s, "booted ") {
		t.Errorf("status after boot = %q, %v", s, err)
	}
	if err := e.agent.Boot(ctx, env); codeOf(err) != codes.FailedPrecondition {
		t.Errorf("second boot: %v, want FailedPrecondition", err)
	}

	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", e.pid))
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == mnt {
			line = l
		}
	}
	if !strings.Contains(line, " - tmpfs ") || !strings.Contains(line, "size=1024k") || !strings.Contains(line, "mode=700") || !strings.Contains(line, "nodev") {
		t.Errorf("tmpfs at %s in the agent's mount namespace: %q", mnt, line)
	}
	lim, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", e.pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(lim), "Max open files            1000                 2000") {
		t.Errorf("agent limits:\n%s", lim)
	}

	// A container sharing the agent's UTS namespace sees the hostname; one
	// without its own rlimits inherits the agent's.
	spec := testSpec(e.rootfs, "sh", "-c", "hostname; ulimit -n")
	spec.Hostname = ""
	spec.Process.Rlimits = nil
	spec.Linux.Namespaces = slices.DeleteFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.UTSNamespace })
	id, _, out, _ := e.run(spec, false)
	e.wait(id, "")
	if got := string(readNow(t, out)); got != "msb-test-host\n1000\n" {
		t.Errorf("container saw %q, want hostname and nofile 1000", got)
	}
}

func TestShutdownKillsAndReleasesWaiters(t *testing.T) {
	e := startAgent(t)
	id, _, out, _ := e.run(testSpec(e.rootfs, "sleep", "1000"), false)
	codeCh := make(chan int32, 1)
	go func() {
		c, err := e.agent.WaitShutdown(ctxT(t))
		if err != nil {
			c = -1
		}
		codeCh <- c
	}()
	time.Sleep(100 * time.Millisecond)
	if err := e.agent.Shutdown(ctxT(t), 5); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-codeCh:
		if c != 5 {
			t.Errorf("WaitShutdown = %d, want 5", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitShutdown not released")
	}
	readNow(t, out)
	if _, err := e.tasks.State(ctxT(t), &task.StateRequest{ID: id}); codeOf(err) != codes.NotFound {
		t.Errorf("container after shutdown: %v, want NotFound (deleted)", err)
	}
}
