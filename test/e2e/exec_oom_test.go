package e2e

import (
	"context"
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
// nerdctl and dockerd use it) gets it as ResourceExhausted, ctr the same
// text. The container runs on. One exec only: a second one into the same
// full cgroup sometimes never returns (the runtime's child thrashes in
// reclaim; seen under TCG), which this test does not cover.
func TestExecFullCgroupNamed(t *testing.T) {
	e := startShimEnv(t)
	const id = "execoom"
	e.startWithFill(t, id, "67108864", "1g")
	// The filler is the OOM killer's first choice: it dies, its tmpfs
	// pages stay charged to the container's cgroup.
	_, stderr, err := e.Ctr("task", "exec", "--exec-id", "fill", id, "sh", "-c", "echo 1000 >/proc/self/oom_score_adj && exec dd if=/dev/zero of=/fill/f bs=64k")
	if err == nil {
		t.Fatalf("the filler exited 0; want it OOM-killed: %s", stderr)
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
	p, err := task.Exec(ctx, "e", &ps, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = p.Start(sctx)
	cancel()
	t.Logf("exec into the full cgroup: %v", err)
	if err == nil {
		t.Fatal("exec into the full cgroup started; want it to fail")
	}
	if !errdefs.IsResourceExhausted(err) {
		t.Errorf("exec start: %v; want ResourceExhausted", err)
	}
	for _, want := range []string{"possibly OOM-killed", "memory limit (64 MiB) is reached"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("exec error %q does not say %q", err, want)
		}
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Errorf("delete the failed exec: %v", err)
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Errorf("task status after the failed exec: %q, want RUNNING", st)
	}
}

// startWithFill runs container id (`sleep`) with a memory limit (bytes)
// and a tmpfs of size (tmpfs's size= option) at /fill to fill its guest
// memory with, and waits until it runs; it is removed at the test's end.
func (e *shimEnv) startWithFill(t *testing.T, id, limit, size string) {
	t.Helper()
	e.MustCtr("run", "-d", "--runtime", msbRuntimeType, "--memory-limit", limit,
		"--mount", "type=tmpfs,destination=/fill,options=size="+size, e.image, id, "sleep", "600")
	t.Cleanup(func() { e.remove(t, id) })
	e.waitStatus(t, id, "RUNNING", 2*time.Minute)
}
