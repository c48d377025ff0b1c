package e2e

// Networking end to end (docs/networking.md): the VMM lives in the
// container's network namespace, what CNI or dockerd configure there
// reaches the guest through a tap and tc redirects, and nothing is left
// behind.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// httpdCmd serves body at / from a busybox httpd in the container.
func httpdCmd(body string) []string {
	return []string{"sh", "-c", "mkdir -p /www && echo " + body + " > /www/index.html && exec httpd -f -p 80 -h /www"}
}

// assertOwnNetNS checks that the task pid's network namespace is the
// container's (want) and neither the host's nor the shim's.
func assertOwnNetNS(t *testing.T, e *shimEnv, id string, pid int, want string) {
	t.Helper()
	ns := fmt.Sprintf("/proc/%d/ns/net", pid)
	if sameNetNS(t, ns, "/proc/self/ns/net") { // the test runs in the host's
		t.Fatalf("task pid %d is in the host's network namespace", pid)
	}
	if shim := e.shimPid(t, id); sameNetNS(t, ns, fmt.Sprintf("/proc/%d/ns/net", shim)) {
		t.Fatalf("task pid %d shares the shim's (%d) network namespace", pid, shim)
	}
	if want != "" && !sameNetNS(t, ns, want) {
		t.Fatalf("task pid %d is not in the container's network namespace %s", pid, want)
	}
}

// TestNetCNI: containers whose namespaces CNI's bridge plugin configured
// (as containerd's CRI and nerdctl do) get their address in the guest:
// the test's host reaches busybox httpd in the VM by the container IP and
// through a portmap host port, pings it, and a second VM on the bridge
// reaches the first. Nothing is left in the namespaces afterwards.
func TestNetCNI(t *testing.T) {
	e := startShimEnv(t)
	host := newNetNS(t)
	cni := newCNI(t, host, "10.88.2.0/24")
	ns1, ns2 := newNetNS(t), newNetNS(t)
	ip1 := cni.add("net1", ns1, 8080)
	cni.add("net2", ns2, 0)

	e.MustCtr(append([]string{"run", "-d", "--runtime", msbRuntimeType, "--with-ns", "network:" + ns1, e.image, "net1"}, httpdCmd("served-by-net1")...)...)
	t.Cleanup(func() { e.remove(t, "net1") })
	e.waitStatus(t, "net1", "RUNNING", 2*time.Minute)
	assertOwnNetNS(t, e, "net1", e.taskPid(t, "net1"), ns1)

	for _, url := range []string{"http://" + ip1 + "/", "http://10.88.2.1:8080/"} {
		body, err := httpGet(host, url, time.Minute)
		if err != nil || body != "served-by-net1\n" {
			t.Fatalf("GET %s from the host: %q, %v", url, body, err)
		}
	}
	if out, err := nsRun(host, "busybox", "ping", "-c", "1", "-W", "10", ip1); err != nil {
		t.Fatalf("ping %s: %v: %s", ip1, err, out)
	}
	out, stderr, code, err := e.run("net2", []string{"--with-ns", "network:" + ns2}, "wget", "-q", "-O-", "http://"+ip1+"/")
	if err != nil || code != 0 || out != "served-by-net1\n" {
		t.Fatalf("net2 → net1: %q, exit %d, %v, %s", out, code, err, stderr)
	}
	e.remove(t, "net1")
	assertUnwired(t, ns1)
	assertUnwired(t, ns2)
}

// TestNetDockerFlow reproduces dockerd's bridge networking: the spec asks
// for a new network namespace; between task create and start dockerd
// moves a veth into /proc/<task pid>/ns/net, renames it eth0 and sets the
// address and default route. The guest must get exactly that.
func TestNetDockerFlow(t *testing.T) {
	e := startShimEnv(t)
	host := testBridge(t, "10.88.3.1")
	serveHTTP(t, host, "10.88.3.1:8000", "the-gateway")
	c, ctx := e.goClient(t)
	ctr := e.newContainer(t, c, "dock", oci.WithProcessArgs(httpdCmd("served-by-docker")...))
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	pid := int(task.Pid())
	assertOwnNetNS(t, e, "dock", pid, "")
	dockerVeth(t, host, fmt.Sprintf("/proc/%d/ns/net", pid), "10.88.3.2", "10.88.3.1")
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if body, err := httpGet(host, "http://10.88.3.2/", time.Minute); err != nil || body != "served-by-docker\n" {
		t.Fatalf("GET from the host: %q, %v", body, err)
	}
	// Container → gateway. Both streams go to one buffer, which must take
	// the two copies' writes one at a time (a bytes.Buffer's ReadFrom does
	// not: concurrent copies into it lose data).
	var out lockedBuffer
	spec, err := ctr.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = []string{"wget", "-q", "-O-", "http://10.88.3.1:8000/"}
	proc, err := task.Exec(ctx, "gw", &pspec, cio.NewCreator(cio.WithStreams(nil, &out, &out)))
	if err != nil {
		t.Fatal(err)
	}
	ch := waitAndStart(t, ctx, proc)
	st := waitExit(t, ch, time.Minute, "exec wget")
	proc.IO().Wait() // the client's copy of the output
	proc.Delete(ctx)
	if st.ExitCode() != 0 || out.String() != "the-gateway" {
		t.Fatalf("container → gateway: exit %d, %q", st.ExitCode(), out.String())
	}
	exit, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, exit, time.Minute, "task")
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	// The VMM's own namespace went with it, and the veth pair with it.
	h := nsHandle(t, host)
	deadline := time.Now().Add(10 * time.Second)
	for {
		links, _ := h.LinkList()
		var veths []string
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "veth") {
				veths = append(veths, l.Attrs().Name)
			}
		}
		if len(veths) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("veths left in the host namespace: %v", veths)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// withHooks sets the spec's hooks.
func withHooks(h *specs.Hooks) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Hooks = h
		return nil
	}
}

// TestNetHooks: prestart, createRuntime, poststart and poststop hooks run
// on the host in that order, each with the state (id, the task pid,
// bundle, status) on stdin — what nerdctl's `internal oci-hook` reads.
func TestNetHooks(t *testing.T) {
	e := startShimEnv(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "hooks.log")
	script := filepath.Join(dir, "hook.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n{ printf '%s ' \"$1\"; cat; echo; } >> "+log+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	hook := func(phase string) []specs.Hook { return []specs.Hook{{Path: script, Args: []string{script, phase}}} }
	c, ctx := e.goClient(t)
	ctr := e.newContainer(t, c, "hooked", oci.WithProcessArgs("true"), withHooks(&specs.Hooks{
		Prestart: hook("prestart"), CreateRuntime: hook("createRuntime"), Poststart: hook("poststart"), Poststop: hook("poststop"),
	}))
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	pid := int(task.Pid())
	exit, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitExit(t, exit, time.Minute, "task")
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	want := []struct{ phase, status string }{{"prestart", "creating"}, {"createRuntime", "creating"}, {"poststart", "running"}, {"poststop", "stopped"}}
	if len(lines) != len(want) {
		t.Fatalf("hook log:\n%s", b)
	}
	for i, w := range want {
		phase, js, _ := strings.Cut(lines[i], " ")
		for _, s := range []string{`"id":"hooked"`, `"pid":` + strconv.Itoa(pid), `"status":"` + w.status + `"`, `"bundle":"/`} {
			if phase != w.phase || !strings.Contains(js, s) {
				t.Errorf("hook %d: %s %s: want %s with %s", i, phase, js, w.phase, s)
			}
		}
	}
}

// TestNetHookFailure: a createRuntime hook that exits 1 fails the task's
// create with the hook's stderr in the error and leaves nothing (the
// shimEnv checks processes and state at the end); one past its timeout is
// killed and fails the create too.
func TestNetHookFailure(t *testing.T) {
	e := startShimEnv(t)
	dir := t.TempDir()
	fail := filepath.Join(dir, "fail.sh")
	slow := filepath.Join(dir, "slow.sh")
	os.WriteFile(fail, []byte("#!/bin/sh\necho 'cni: no IP addresses left' >&2\nexit 1\n"), 0o755)
	os.WriteFile(slow, []byte("#!/bin/sh\nsleep 60\n"), 0o755)
	one := 1
	c, ctx := e.goClient(t)
	for _, tc := range []struct {
		id   string
		hook specs.Hook
		want string
	}{
		{"hookfail", specs.Hook{Path: fail}, "cni: no IP addresses left"},
		{"hookslow", specs.Hook{Path: slow, Timeout: &one}, "timed out after 1s"},
	} {
		ctr := e.newContainer(t, c, tc.id, oci.WithProcessArgs("true"), withHooks(&specs.Hooks{CreateRuntime: []specs.Hook{tc.hook}}))
		start := time.Now()
		_, err := ctr.NewTask(ctx, cio.NullIO)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "hooks.createRuntime[0]") {
			t.Fatalf("%s: create err = %v", tc.id, err)
		}
		if d := time.Since(start); d > 2*time.Minute {
			t.Errorf("%s: create took %s", tc.id, d)
		}
		if procs := e.vmProcesses(); len(procs) > 0 {
			t.Fatalf("%s: VM processes left after a failed create: %v", tc.id, procs)
		}
	}
}

// TestNetPod: a pod's sandbox names the pod's CNI namespace, its app
// container joins it; the pod has one IP, served by the app container's
// httpd, reachable from the host and, through lo, from the sandbox.
func TestNetPod(t *testing.T) {
	e := startShimEnv(t)
	host := newNetNS(t)
	cni := newCNI(t, host, "10.88.4.0/24")
	podNS := newNetNS(t)
	ip := cni.add("pod", podNS, 0)
	const sb, app = "npod-sb", "npod-app"
	ann := func(typ string) []string {
		return []string{"--annotation", "io.kubernetes.cri.container-type=" + typ,
			"--annotation", "io.kubernetes.cri.sandbox-id=" + sb, "--with-ns", "network:" + podNS}
	}
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, ann("sandbox")...), e.image, sb, "sleep", "600")...)
	t.Cleanup(func() { e.remove(t, sb) })
	e.waitStatus(t, sb, "RUNNING", 2*time.Minute)
	assertOwnNetNS(t, e, sb, e.taskPid(t, sb), podNS)
	e.MustCtr(append(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, ann("container")...), e.image, app), httpdCmd("served-by-pod")...)...)
	e.waitStatus(t, app, "RUNNING", time.Minute)
	if body, err := httpGet(host, "http://"+ip+"/", time.Minute); err != nil || body != "served-by-pod\n" {
		t.Fatalf("GET pod IP %s: %q, %v", ip, body, err)
	}
	if out := e.MustCtr("task", "exec", "--exec-id", "lo", sb, "wget", "-q", "-O-", "http://127.0.0.1/"); out != "served-by-pod\n" {
		t.Fatalf("sandbox → app over lo: %q", out)
	}
	// Port-forward as containerd's CRI does it: dial localhost:PORT inside
	// the pod's network namespace on the host.
	if body, err := httpGet(podNS, "http://127.0.0.1:80/", time.Minute); err != nil || body != "served-by-pod\n" {
		t.Fatalf("port-forward (127.0.0.1:80 in the pod netns on the host): %q, %v", body, err)
	}
	var err error
	if ierr := inNetNS(podNS, func() error {
		c, derr := net.DialTimeout("tcp4", "127.0.0.1:81", 5*time.Second)
		if derr == nil {
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			_, derr = c.Read(make([]byte, 1))
			c.Close()
		}
		err = derr
		return nil
	}); ierr != nil || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("port-forward to a port nothing listens on in the guest: %v, %v; want connection reset", ierr, err)
	}
	e.remove(t, app)
	e.remove(t, sb)
	assertUnwired(t, podNS)
}

// TestNetShimKilled: after SIGKILL of the shim, the VMM (its watchdog)
// unwires the CNI namespace before it goes.
func TestNetShimKilled(t *testing.T) {
	e := startShimEnv(t)
	host := newNetNS(t)
	cni := newCNI(t, host, "10.88.5.0/24")
	ns := newNetNS(t)
	ip := cni.add("victim", ns, 0)
	e.MustCtr("run", "-d", "--runtime", msbRuntimeType, "--with-ns", "network:"+ns, e.image, "nvictim", "sh", "-c", "mkdir /www; echo up > /www/index.html; exec httpd -f -p 80 -h /www")
	e.waitStatus(t, "nvictim", "RUNNING", 2*time.Minute)
	if body, err := httpGet(host, "http://"+ip+"/", time.Minute); err != nil || body != "up\n" {
		t.Fatalf("GET %s: %q, %v", ip, body, err)
	}
	e.killShim(t, "nvictim")
	e.assertClean(t)
	assertUnwired(t, ns)
	_, _, _ = e.Ctr("task", "delete", "nvictim")
	e.MustCtr("container", "delete", "nvictim")
	e.waitShimDeletes()
}

// A container may not join the host's network namespace.
func TestNetRefused(t *testing.T) {
	e := startShimEnv(t)
	hostNS := fmt.Sprintf("/proc/%d/ns/net", os.Getpid()) // the test runs in the host's
	_, stderr, code, _ := e.run("hostnet", []string{"--with-ns", "network:" + hostNS}, "true")
	if code == 0 || !strings.Contains(stderr, "is the host's") {
		t.Fatalf("host netns: exit %d, %s", code, stderr)
	}
}

// TestRuntimeRunNetwork: `msb-runtime run` does what the shim does: the
// VMM joins the spec's network namespace path, the createRuntime hook runs
// on the host with the VMM's pid, the guest reaches the gateway, and the
// namespace is unwired after the run.
func TestRuntimeRunNetwork(t *testing.T) {
	requireVM(t)
	host := testBridge(t, "10.88.6.1")
	serveHTTP(t, host, "10.88.6.1:8000", "the-gateway")
	ns := newNetNS(t)
	dockerVeth(t, host, ns, "10.88.6.2", "10.88.6.1")
	dir := t.TempDir()
	marker := filepath.Join(dir, "hook.out")
	script := filepath.Join(dir, "hook.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncat > "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := bundle(t, []string{"busybox", "wget", "-q", "-O-", "http://10.88.6.1:8000/"}, func(s *specs.Spec) {
		for i, n := range s.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				s.Linux.Namespaces[i].Path = ns
			}
		}
		s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: script}}}
	})
	r := run(t, b, "")
	if r.code != 0 || r.stdout != "the-gateway" {
		t.Fatalf("exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	st, err := os.ReadFile(marker)
	if err != nil || !strings.Contains(string(st), `"status":"creating"`) || !strings.Contains(string(st), `"pid":`) {
		t.Fatalf("createRuntime hook state %q, %v", st, err)
	}
	assertUnwired(t, ns)
}
