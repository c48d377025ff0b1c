package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
)

// An exec into a container whose memory cgroup is full (a tmpfs filled to
// the container's memory limit) fails with an error that says so, as
// runc's "possibly OOM-killed" does, naming the limit, not the runtime's
// bare "/init did not terminate successfully"; containerd's Go client (as
// nerdctl and dockerd use it) gets it as ResourceExhausted. The container
// runs on.
func TestExecFullCgroupNamed(t *testing.T) {
	e := startShimEnv(t)
	const id = "execoom"
	e.MustCtr("run", "-d", "--runtime", msbRuntimeType, "--memory-limit", "67108864",
		"--mount", "type=tmpfs,destination=/fill,options=size=1g", e.image, id, "sleep", "600")
	t.Cleanup(func() { e.remove(t, id) })
	e.waitStatus(t, id, "RUNNING", 2*time.Minute)
	// The filler is the OOM killer's first choice: it dies, its tmpfs
	// pages stay charged to the container's cgroup.
	_, stderr, err := e.Ctr("task", "exec", "--exec-id", "fill", id, "sh", "-c", "echo 1000 >/proc/self/oom_score_adj && exec dd if=/dev/zero of=/fill/f bs=64k")
	if err == nil {
		t.Fatalf("the filler exited 0; want it OOM-killed: %s", stderr)
	}
	_, stderr, err = e.Ctr("task", "exec", "--exec-id", "e", id, "true")
	t.Logf("exec into the full cgroup: %v", err)
	if err == nil {
		t.Fatal("exec into the full cgroup succeeded; want it to fail")
	}
	for _, want := range []string{"possibly OOM-killed", "memory limit", "64 MiB"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("exec error %q does not say %q", stderr, want)
		}
	}
	c, ctx := e.goClient(t)
	ctrd, err := c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ctrd.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctrd.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	ps := *spec.Process
	ps.Args = []string{"true"}
	p, err := task.Exec(ctx, "e2", &ps, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "possibly OOM-killed") {
		t.Errorf("Go client's exec start: %v; want ResourceExhausted, possibly OOM-killed", err)
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Errorf("delete the failed exec: %v", err)
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Errorf("task status after the failed exec: %q, want RUNNING", st)
	}
}
