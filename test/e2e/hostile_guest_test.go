package e2e

// The guest is hostile: root in the guest, reached the way an attacker in
// a privileged container reaches it, takes the agent's channel over and
// attacks the host through it. After each attack the shim answers, the
// other container is untouched, the VMM's memory stays bounded and
// nothing is left behind.
//
// The attacker is test/e2e/hostileguest, built static and bind-mounted
// into a container run with --privileged-without-host-devices (what
// install.sh allows CRI pods). The container writes
// "|/proc/%P/root/hg/hostileguest %P" to /proc/sys/kernel/core_pattern
// and crashes a process: the guest kernel runs the program as root with
// every capability in the guest's initial namespaces, which stops the
// agent and takes its virtio-serial fd (pidfd_getfd). From then on it is
// the guest's end of the host's yamux session, as a kernel exploit would
// be; the production agent holds no test code.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/network"
)

var (
	hostileOnce sync.Once
	hostileBin  string
	hostileErr  error
)

// buildHostile builds the attack program, static, once.
func buildHostile(t *testing.T) string {
	t.Helper()
	hostileOnce.Do(func() {
		dir, err := os.MkdirTemp("", "msb-hostile-")
		if err != nil {
			hostileErr = err
			return
		}
		hostileBin = filepath.Join(dir, "hostileguest")
		cmd := exec.Command("go", "build", "-o", hostileBin, "./hostileguest")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			hostileErr = fmt.Errorf("build the attack program: %v\n%s", err, out)
		}
	})
	if hostileErr != nil {
		t.Fatal(hostileErr)
	}
	return hostileBin
}

// hostileContainer runs container id, privileged without host devices,
// with the attack program and its args (hostileguest's modes) in /hg. It
// returns that directory.
func (e *shimEnv) hostileContainer(t *testing.T, id, args string, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	bin, err := os.ReadFile(buildHostile(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hostileguest"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "attack.args"), []byte(args+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := append([]string{"run", "-d", "--runtime", msbRuntimeType, "--privileged", "--privileged-without-host-devices",
		"--mount", "type=bind,src=" + dir + ",dst=/hg,options=rbind:rw"}, flags...)
	e.MustCtr(append(a, e.image, id, "sleep", "600")...)
	t.Cleanup(func() { e.remove(t, id) })
	e.waitStatus(t, id, "RUNNING", time.Minute)
	return dir
}

// attack reaches guest root in container id as an attacker in it would
// and returns once the attack program holds the agent's channel and is
// ready, with its log's path. The crashing exec runs in the background:
// once the agent is stopped its exit cannot be reported until the VM
// goes, and how the exec ends (when the VM is killed, or the session
// ends) is no part of what the tests assert.
func (e *shimEnv) attack(t *testing.T, id, dir string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	crash := e.CtrCmd(ctx, "task", "exec", "--exec-id", "crash", id, "sh", "-c",
		`echo '|/proc/%P/root/hg/hostileguest %P' > /proc/sys/kernel/core_pattern && sh -c 'kill -SEGV $$'; true`)
	var out strings.Builder
	crash.Stdout, crash.Stderr = &out, &out
	if err := crash.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = crash.Wait()
	})
	logPath := filepath.Join(dir, "attack.log")
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "ready") {
			t.Logf("attacker:\n%s", b)
			return logPath
		}
		if time.Now().After(deadline) {
			cancel()
			err := crash.Wait()
			t.Fatalf("the attacker is not ready after a minute; the crashing exec: %v: %q; the attacker's log:\n%s", err, out.String(), b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// rssKiB is a process's resident memory.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

// bystander runs a container beside the attacker and returns a check that
// it still runs and answers, with no exit or OOM event published for it.
func (e *shimEnv) bystander(t *testing.T, id string) func(events []string) {
	t.Helper()
	e.startDetached(t, id, "sleep", "600")
	t.Cleanup(func() { e.remove(t, id) })
	e.waitStatus(t, id, "RUNNING", time.Minute)
	return func(events []string) {
		t.Helper()
		if st := e.taskStatus(id); st != "RUNNING" {
			t.Errorf("the other container %s is %q, want RUNNING", id, st)
		}
		if out, _, err := e.Ctr("task", "exec", "--exec-id", "alive", id, "echo", "alive"); err != nil || out != "alive\n" {
			t.Errorf("the other container does not answer: %q, %v", out, err)
		}
		for _, l := range events {
			if strings.Contains(l, `"`+id+`"`) && (strings.HasPrefix(l, "/tasks/oom") || strings.HasPrefix(l, "/tasks/exit")) {
				t.Errorf("event for the other container: %s", l)
			}
		}
	}
}

// shimAnswers checks the attacker's shim still serves containerd, in
// bounded time, and the attacker's container can be killed and removed.
func (e *shimEnv) shimAnswers(t *testing.T, id string) {
	t.Helper()
	start := time.Now()
	if _, stderr, err := e.Ctr("task", "ls"); err != nil || time.Since(start) > time.Minute {
		t.Fatalf("ctr task ls: %v after %s: %s", err, time.Since(start), stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := e.CtrCmd(ctx, "task", "kill", "-s", "SIGKILL", id).CombinedOutput(); err != nil && !strings.Contains(string(out), "not found") {
		t.Fatalf("ctr task kill: %v: %s", err, out)
	}
	e.waitStatus(t, id, "STOPPED", 2*time.Minute)
}

// vmmGrowth is how much the VMM's RSS grew over base, with a look at it
// for a few seconds (the attack's frames still arriving).
func vmmGrowth(t *testing.T, pid, base int) int {
	t.Helper()
	peak := 0
	for i := 0; i < 10; i++ {
		if n := rssKiB(t, pid); n > peak {
			peak = n
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("VMM RSS %d KiB before the attack, %d KiB after", base, peak)
	return peak - base
}

// maxVMMGrowthKiB is the VMM's allowed growth under an attack: a stream
// left to yamux holds up to 256 KiB the guest sent; 256 of them (yamux's
// backlog) are 64 MiB.
const maxVMMGrowthKiB = 16 << 10

// A guest forges OOM events for another container, floods the events of
// its own, and answers calls the host never made: none of it reaches
// containerd beyond the rate limit, and containerd's log does not fill.
func TestHostileGuestForgedEvents(t *testing.T) {
	e := startShimEnv(t)
	const victim, attacker = "victim", "forger"
	check := e.bystander(t, victim)
	stop := e.ctrEvents(t)
	logPath := e.attack(t, attacker, e.hostileContainer(t, attacker, "oom "+victim))
	// The host's next calls go to the attacker: an exec's exit makes the
	// shim fetch OOM events.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	trigger := e.CtrCmd(ctx, "task", "exec", "--exec-id", "trigger", attacker, "true")
	if err := trigger.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = trigger.Wait() }()
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "answers to calls never made") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the attacker never got an OOMEvents call; its log:\n%s", b)
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	cancel()
	events := stop()
	own := 0
	for _, l := range events {
		if strings.HasPrefix(l, "/tasks/oom") && strings.Contains(l, `"`+attacker+`"`) {
			own++
		}
	}
	// 100 forged for its own container: at most the shim's burst (20).
	if own == 0 || own > 20 {
		t.Errorf("%d TaskOOM for the attacker's own container from 100 forged, want 1 to 20", own)
	}
	if n := strings.Count(e.Log(), "received message on inactive stream"); n > 0 {
		t.Errorf("containerd's log has %d lines of ttrpc's about answers to calls never made, want 0", n)
	}
	e.shimAnswers(t, attacker)
	check(events)
}

// A guest opens thousands of streams to the host, the first hundreds with
// a window of data each: the VMM keeps none of it.
func TestHostileGuestStreams(t *testing.T) {
	e := startShimEnv(t)
	check := e.bystander(t, "bystander")
	const attacker = "streams"
	dir := e.hostileContainer(t, attacker, "streams 5000")
	pid := e.vmmPid(t, attacker)
	base := rssKiB(t, pid)
	e.attack(t, attacker, dir)
	if growth := vmmGrowth(t, pid, base); growth > maxVMMGrowthKiB {
		t.Errorf("the VMM's RSS grew %d KiB under 5000 guest streams, want at most %d", growth, maxVMMGrowthKiB)
	}
	e.shimAnswers(t, attacker)
	check(nil)
}

// A guest sends a data frame far over any window, then bytes that are no
// frame: the VMM ends the session without reading it, the container's
// exit is reported, and the VM goes with its delete.
func TestHostileGuestMalformedFrames(t *testing.T) {
	e := startShimEnv(t)
	check := e.bystander(t, "bystander")
	const attacker = "frames"
	dir := e.hostileContainer(t, attacker, "frames")
	pid := e.vmmPid(t, attacker)
	base := rssKiB(t, pid)
	e.attack(t, attacker, dir)
	if growth := vmmGrowth(t, pid, base); growth > maxVMMGrowthKiB {
		t.Errorf("the VMM's RSS grew %d KiB under malformed frames, want at most %d", growth, maxVMMGrowthKiB)
	}
	e.waitStatus(t, attacker, "STOPPED", 2*time.Minute)
	e.remove(t, attacker)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("the attacker's VMM %d still runs after its container's delete", pid)
	}
	check(nil)
}

// A guest never answers a port-forward: the client's connection is
// refused within the shim's bound instead of hanging.
func TestHostileGuestPortForwardUnanswered(t *testing.T) {
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("loopback forwarding needs iptables")
	}
	e := startShimEnv(t)
	check := e.bystander(t, "bystander")
	const attacker = "silent"
	// A pod sandbox in a network namespace of its own, lo up, as CRI
	// runs one: the shim forwards 127.0.0.1 there into the guest.
	ns := newNetNS(t)
	dir := e.hostileContainer(t, attacker, "stall", append(podAnn(attacker, "sandbox"), "--with-ns", "network:"+ns)...)
	e.attack(t, attacker, dir)
	var c net.Conn
	if err := network.InNS(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", "127.0.0.1:8080", 10*time.Second)
		return err
	}); err != nil {
		t.Fatalf("connect to the pod's loopback: %v", err)
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(90 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	// Refused at once would prove nothing: the open must have reached
	// the guest and been given its time (launch's portOpenTimeout, 20 s).
	if d := time.Since(start); d < 10*time.Second {
		t.Fatalf("the port-forward ended after %s (read: %v), before the guest was given its time: the open never reached it", d.Round(time.Second), err)
	}
	if errors.As(err, &ne) && ne.Timeout() || time.Since(start) > time.Minute {
		t.Fatalf("a port-forward the guest never answers hung %s (read: %v), want it refused within the shim's bound", time.Since(start).Round(time.Second), err)
	}
	t.Logf("port-forward refused after %s: %v", time.Since(start).Round(time.Second), err)
	e.shimAnswers(t, attacker)
	check(nil)
}

// A guest acknowledges a SIGKILL of its container's init and never
// reports the exit: `ctr task delete --force`, which waits for that exit,
// still ends (the shim kills the VM killExitWait after the kill), and the
// container can then be removed.
func TestHostileGuestKillAcknowledged(t *testing.T) {
	e := startShimEnv(t)
	check := e.bystander(t, "bystander")
	const attacker = "liar"
	dir := e.hostileContainer(t, attacker, "ack")
	pid := e.vmmPid(t, attacker)
	e.attack(t, attacker, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	if out, err := e.CtrCmd(ctx, "task", "delete", "--force", attacker).CombinedOutput(); err != nil {
		t.Fatalf("ctr task delete --force of a container whose guest acknowledges the kill: %v after %s: %s", err, time.Since(start).Round(time.Second), out)
	}
	t.Logf("ctr task delete --force took %s", time.Since(start).Round(time.Second))
	e.MustCtr("container", "delete", attacker)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("the attacker's VMM %d still runs after its container's delete", pid)
	}
	check(nil)
}
