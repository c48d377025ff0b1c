package e2e

// What containerd's own client suite (integration/client, issue 26) found
// missing, each as its test does it with containerd's Go client: a
// namespace as long as containerd allows, an exec whose request asks for a
// terminal its process spec does not, and the ShimCgroup runtime option.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/test/containerdtest"
)

// TestShimLongNamespace: as containerd's TestShimSockLength, a container
// of a 64-byte id in a 76-byte namespace (containerd's longest) runs and
// its output is read: no socket path depends on the namespace's or the
// id's length.
func TestShimLongNamespace(t *testing.T) {
	suffix := fmt.Sprintf("-%08x", rand.Uint32()) // concurrent runs share host cgroups by namespace
	ns := strings.Repeat("n", 76-len(suffix)) + suffix
	e := startShimEnvWith(t, containerdtest.Options{Namespace: ns})
	c, ctx := e.goClient(t)
	id := strings.Repeat("c", 64)
	ctr := e.newContainer(t, c, id, oci.WithProcessArgs("echo", "long-names-ok"))
	var out, errb lockedBuffer
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &errb)))
	if err != nil {
		t.Fatalf("create in a %d-byte namespace with a %d-byte id: %v", len(ns), len(id), err)
	}
	st := waitExit(t, waitAndStart(t, ctx, task), 2*time.Minute, id)
	task.IO().Wait()
	if st.ExitCode() != 0 || out.String() != "long-names-ok\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", st.ExitCode(), out.String(), errb.String())
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRuntimeCLILongRoot: msb-runtime under a --root as long as
// containerd's runc shim passes for a 76-byte namespace
// (/run/containerd/runc/<namespace>) runs a 64-byte id, and leaves nothing.
func TestRuntimeCLILongRoot(t *testing.T) {
	requireVM(t)
	root := filepath.Join(stateRoot(t), strings.Repeat("n", 96))
	cmd := runtimeCmd(root, "run", "--bundle", bundle(t, []string{"echo", "long-root-ok"}, nil), strings.Repeat("c", 64))
	out, err := cmd.Output()
	if err != nil || string(out) != "long-root-ok\n" {
		var stderr []byte
		if ee, ok := err.(interface{ Stderr() []byte }); ok {
			stderr = ee.Stderr()
		}
		t.Fatalf("run under a %d-byte root: %v, stdout %q %s", len(root), err, out, stderr)
	}
	assertNothingLeft(t, root)
}

// TestShimExecTerminalFromRequest: as containerd's
// TestContainerExecLargeOutputWithTTY, an exec made with cio.WithTerminal
// from the container's process spec (terminal false) gets a terminal, as
// under runc's shim, and its large output arrives whole.
func TestShimExecTerminalFromRequest(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	task, spec := e.runningTask(t, c, "ttyexec")
	const n = 100000
	ps := *spec.Process
	if ps.Terminal {
		t.Fatal("the container's process spec has a terminal: the test needs one without")
	}
	ps.Args = []string{"sh", "-c", fmt.Sprintf(`[ -t 1 ] && echo tty; seq -s " " %d`, n)}
	var out lockedBuffer
	p, err := task.Exec(ctx, "big", &ps, cio.NewCreator(cio.WithStreams(nil, &out, nil), cio.WithTerminal))
	if err != nil {
		t.Fatalf("exec with a terminal in the request only: %v", err)
	}
	st := waitExit(t, waitAndStart(t, ctx, p), 3*time.Minute, "exec")
	p.IO().Wait()
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(out.String())
	if st.ExitCode() != 0 || len(got) != n+1 || got[0] != "tty" || got[n] != strconv.Itoa(n) {
		t.Fatalf("exit %d, %d fields (want \"tty\" and %d numbers), first %q, last %q",
			st.ExitCode(), len(got), n, got[:min(len(got), 2)], got[max(len(got)-1, 0):])
	}
}

// TestShimInCgroup: as containerd's TestShimInCgroup, the runtime option
// ShimCgroup (client.WithShimCgroup) puts the shim into that cgroup; the
// VMM keeps the container's own host cgroup; the cgroup is empty and
// removable once the container is gone.
func TestShimInCgroup(t *testing.T) {
	e := startShimEnv(t)
	c, ctx := e.goClient(t)
	path := "/msbtest-shim-" + strconv.Itoa(os.Getpid())
	var del func() error
	if cgroups.Mode() == cgroups.Unified {
		cg, err := cgroup2.NewManager("/sys/fs/cgroup", path, &cgroup2.Resources{})
		if err != nil {
			t.Fatal(err)
		}
		del = cg.Delete
	} else {
		cg, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
		if err != nil {
			t.Fatal(err)
		}
		del = cg.Delete
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = del()
		}
	})
	const id = "shimcg"
	ctr := e.newContainer(t, c, id, oci.WithProcessArgs("sleep", "600"))
	task, err := ctr.NewTask(ctx, cio.NullIO, client.WithShimCgroup(path))
	if err != nil {
		t.Fatalf("create with ShimCgroup %s: %v", path, err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	shim := e.shimPid(t, id)
	for _, l := range cgroupLines(t, shim) {
		if l != path {
			t.Errorf("shim %d: cgroup %q, want %s in every hierarchy", shim, l, path)
		}
	}
	for _, l := range cgroupLines(t, e.vmmPid(t, id)) {
		if l == path {
			t.Errorf("the VMM followed the shim into %s; it keeps the container's own cgroup", path)
		}
	}
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, exitC, time.Minute, id)
	e.remove(t, id)
	deadline := time.Now().Add(15 * time.Second)
	for syscall.Kill(shim, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("shim %d still runs after its container was removed", shim)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := del(); err != nil {
		t.Fatalf("remove the shim's cgroup after the shim exited: %v", err)
	}
	deleted = true
}

// cgroupLines is the cgroup path of pid in each hierarchy
// (/proc/<pid>/cgroup), named_systemd's and empty v1 lines left out.
func cgroupLines(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 || parts[1] == "" && cgroups.Mode() != cgroups.Unified || strings.HasPrefix(parts[1], "name=") {
			continue
		}
		paths = append(paths, parts[2])
	}
	if len(paths) == 0 {
		t.Fatalf("pid %d: no cgroup in %q", pid, b)
	}
	return paths
}
