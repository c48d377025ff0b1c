package e2e

// msb-runtime's runc commands against runc's documented behaviour: state
// transitions, the container's pid (the VMM process) exiting with the
// container's status, exec pids, kill of a created container, delete of a
// running one, JSON shapes, errors in --log, and what is left when the CLI
// or the VMM is killed. A "reaper" (this test binary re-executed as a
// child subreaper, as conmon and containerd's shims are) runs the commands
// that leave processes behind and reports each exit.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/ociruntime"
)

func init() {
	if os.Getenv("MSB_TEST_REAPER") == "1" {
		os.Exit(reaperMain())
	}
}

// reaperMain runs os.Args[1:] as a child subreaper and writes "pid status"
// on fd 3 for every process it reaps (its child and the orphans that come
// to it), until none is left.
func reaperMain() int {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "reaper:", err)
		return 1
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "reaper:", err)
		return 1
	}
	report := os.NewFile(3, "report")
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0
		}
		code := ws.ExitStatus()
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		fmt.Fprintf(report, "%d %d\n", pid, code)
	}
}

// reaper is one reaper process and the exits it reports.
type reaper struct {
	cmd   *exec.Cmd
	exits chan [2]int // pid, status
}

// underReaper starts msb-runtime --root root args... under a reaper.
func underReaper(t *testing.T, root string, stdin io.Reader, stdout, stderr io.Writer, args ...string) *reaper {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], append([]string{msbRuntime, "--root", root}, args...)...)
	cmd.Env = append(os.Environ(), "MSB_TEST_REAPER=1", "MSB_CONFIG="+configFile)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.ExtraFiles = []*os.File{pw}
	cmd.WaitDelay = 10 * time.Second // a VMM left by a failed test may hold the pipes
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	r := &reaper{cmd: cmd, exits: make(chan [2]int, 8)}
	go func() {
		s := bufio.NewScanner(pr)
		for s.Scan() {
			var e [2]int
			fmt.Sscan(s.Text(), &e[0], &e[1])
			r.exits <- e
		}
		pr.Close()
		close(r.exits)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return r
}

// next is the next exit the reaper reports.
func (r *reaper) next(t *testing.T, d time.Duration) (pid, status int) {
	t.Helper()
	select {
	case e, ok := <-r.exits:
		if !ok {
			t.Fatal("reaper ended without another exit")
		}
		return e[0], e[1]
	case <-time.After(d):
		t.Fatalf("no exit reported within %s", d)
	}
	return 0, 0
}

// cli runs msb-runtime --root root args... to its end.
func cli(t *testing.T, root string, args ...string) (string, string, int) {
	t.Helper()
	cmd := runtimeCmd(root, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	code := exitCode(t, cmd.Run())
	return out.String(), errb.String(), code
}

func mustCLI(t *testing.T, root string, args ...string) string {
	t.Helper()
	out, errOut, code := cli(t, root, args...)
	if code != 0 {
		t.Fatalf("msb-runtime %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

type cliState struct {
	Version string `json:"ociVersion"`
	ID      string `json:"id"`
	Pid     int    `json:"pid"`
	Status  string `json:"status"`
	Bundle  string `json:"bundle"`
	Rootfs  string `json:"rootfs"`
	Created string `json:"created"`
	Owner   *string
}

func cliStateOf(t *testing.T, root, id string) cliState {
	t.Helper()
	out := mustCLI(t, root, "state", id)
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("state %s: %v: %q", id, err, out)
	}
	for _, k := range []string{"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("state JSON has no %q: %s", k, out)
		}
	}
	var st cliState
	_ = json.Unmarshal([]byte(out), &st)
	return st
}

func TestRuntimeCLILifecycle(t *testing.T) {
	requireVM(t)
	root := stateRoot(t)
	b := bundle(t, []string{"sh", "-c", "read line; echo got-$line; echo to-err >&2; exit 7"}, nil)
	pidFile := filepath.Join(t.TempDir(), "pid")
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var out, errb lockedBuffer
	r := underReaper(t, root, stdinR, &out, &errb, "create", "--bundle", b, "--pid-file", pidFile, "c1")
	stdinR.Close()
	if _, code := r.next(t, 3*time.Minute); code != 0 {
		t.Fatalf("create: exit %d: %s", code, errb.String())
	}
	pf, _ := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(string(pf))
	st := cliStateOf(t, root, "c1")
	if st.Status != "created" || st.Pid != pid || pid <= 0 || st.Bundle != b || st.ID != "c1" {
		t.Fatalf("after create: %+v, pid file %q", st, pf)
	}
	var list []cliState
	if err := json.Unmarshal([]byte(mustCLI(t, root, "list", "--format", "json")), &list); err != nil || len(list) != 1 || list[0].ID != "c1" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if ps := strings.TrimSpace(mustCLI(t, root, "ps", "--format", "json", "c1")); ps != fmt.Sprintf("[%d]", pid) {
		t.Errorf("ps: %s, want [%d] (the VMM process)", ps, pid)
	}
	if _, _, code := cli(t, root, "start", "nope"); code == 0 {
		t.Error("start of a missing container succeeded")
	}
	mustCLI(t, root, "start", "c1")
	if st := cliStateOf(t, root, "c1"); st.Status != "running" {
		t.Fatalf("after start: %+v", st)
	}
	if _, errOut, code := cli(t, root, "start", "c1"); code == 0 {
		t.Error("start of a running container succeeded")
	} else if !strings.Contains(errOut, "running") {
		t.Errorf("second start: %q", errOut)
	}
	if _, errOut, code := cli(t, root, "delete", "c1"); code == 0 || !strings.Contains(errOut, "not stopped") {
		t.Fatalf("delete of a running container: exit %d, %q; want refused", code, errOut)
	}

	// exec in the foreground: its status is msb-runtime's.
	if o, e, code := cli(t, root, "exec", "c1", "sh", "-c", "echo fg-exec; exit 5"); code != 5 || o != "fg-exec\n" {
		t.Fatalf("exec: exit %d, %q %q", code, o, e)
	}
	// exec --detach: its pid is a relay that exits with the process.
	execPid := filepath.Join(t.TempDir(), "exec.pid")
	var eout lockedBuffer
	er := underReaper(t, root, nil, &eout, &eout, "exec", "--detach", "--pid-file", execPid, "c1", "sh", "-c", "sleep 1; echo detached-out; exit 6")
	if _, code := er.next(t, time.Minute); code != 0 {
		t.Fatalf("exec --detach: exit %d: %s", code, eout.String())
	}
	rp, _ := os.ReadFile(execPid)
	relayPid, _ := strconv.Atoi(string(rp))
	if p, code := er.next(t, time.Minute); p != relayPid || code != 6 {
		t.Fatalf("exec relay: pid %d exited %d; want pid %d (pid file) with 6", p, code, relayPid)
	}
	if err := er.cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(eout.String(), "detached-out") {
		t.Errorf("detached exec output %q", eout.String())
	}

	mustCLI(t, root, "pause", "c1")
	if st := cliStateOf(t, root, "c1"); st.Status != "paused" {
		t.Errorf("after pause: %s", st.Status)
	}
	mustCLI(t, root, "resume", "c1")
	mustCLI(t, root, "update", "--memory", "64m", "c1")
	// The default VM (256 MiB, 128 of them overhead_mib; 1 vCPU) grows
	// within its headroom (resize_memory_factor 2: 512 MiB, ADR 031): 64m
	// made it 192 MiB, 300m makes it 428.
	mustCLI(t, root, "update", "--memory", "300m", "c1")
	// Past the headroom, or past its vCPUs: refused.
	for _, c := range []struct{ flags, want []string }{
		{[]string{"--memory", "2g"}, []string{"linux.resources.memory.limit 2147483648", "512 MiB this VM can grow to", "resize_memory_factor", "it has 428 MiB now"}},
		{[]string{"--cpu-quota", "200000", "--cpu-period", "100000"}, []string{"linux.resources.cpu.quota 200000", "the VM's 1 vCPUs"}},
	} {
		if _, errOut, code := cli(t, root, append(append([]string{"update"}, c.flags...), "c1")...); code == 0 {
			t.Errorf("update %v past the VM: accepted", c.flags)
		} else {
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("update %v: %q lacks %q", c.flags, errOut, w)
				}
			}
		}
	}

	// The container reads stdin, writes both streams and exits 7: the VMM
	// process exits 7 after all output has reached the pipes.
	if _, err := stdinW.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	stdinW.Close()
	p, code := r.next(t, time.Minute)
	if p != pid || code != 7 {
		t.Fatalf("pid %d exited %d; want the container's pid %d with 7", p, code, pid)
	}
	if err := r.cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "got-hello\n" || errb.String() != "to-err\n" {
		t.Errorf("stdout %q, stderr %q", out.String(), errb.String())
	}
	if st := cliStateOf(t, root, "c1"); st.Status != "stopped" || st.Pid != 0 {
		t.Errorf("after exit: %+v", st)
	}
	mustCLI(t, root, "delete", "c1")
	if _, errOut, code := cli(t, root, "state", "c1"); code == 0 || !strings.Contains(errOut, "does not exist") {
		t.Errorf("state after delete: exit %d %q", code, errOut)
	}
	mustCLI(t, root, "delete", "--force", "c1") // runc: nothing to do
	assertNothingLeft(t, root)
}

// TestRuntimeCLIKillDelete: kill of a created container, delete --force
// of a running one; runc's errors in --log as JSON.
func TestRuntimeCLIKillDelete(t *testing.T) {
	requireVM(t)
	root := stateRoot(t)
	b := bundle(t, []string{"sleep", "600"}, nil)
	var errb lockedBuffer
	r := underReaper(t, root, nil, io.Discard, &errb, "create", "--bundle", b, "k1")
	if _, code := r.next(t, 3*time.Minute); code != 0 {
		t.Fatalf("create: exit %d: %s", code, errb.String())
	}
	pid := cliStateOf(t, root, "k1").Pid
	mustCLI(t, root, "kill", "k1", "KILL")
	if p, code := r.next(t, time.Minute); p != pid || code != 137 {
		t.Fatalf("after kill of a created container: pid %d exited %d, want %d with 137", p, code, pid)
	}
	if _, errOut, code := cli(t, root, "kill", "k1"); code == 0 || !strings.Contains(errOut, "not running") {
		t.Errorf("kill of a stopped container: exit %d %q", code, errOut)
	}
	mustCLI(t, root, "delete", "k1")

	r = underReaper(t, root, nil, io.Discard, &errb, "run", "--detach", "--bundle", b, "k2")
	if _, code := r.next(t, 3*time.Minute); code != 0 {
		t.Fatalf("run --detach: exit %d: %s", code, errb.String())
	}
	if st := cliStateOf(t, root, "k2"); st.Status != "running" {
		t.Fatalf("after run --detach: %+v", st)
	}
	mustCLI(t, root, "delete", "--force", "k2")
	if _, code := r.next(t, time.Minute); code != 137 {
		t.Errorf("after delete --force: VMM exited %d, want 137", code)
	}
	assertNothingLeft(t, root)

	logFile := filepath.Join(t.TempDir(), "log.json")
	if _, _, code := cli(t, root, "--log", logFile, "--log-format", "json", "start", "nope"); code == 0 {
		t.Fatal("start of a missing container succeeded")
	}
	lb, _ := os.ReadFile(logFile)
	var entry struct{ Level, Msg string }
	if err := json.Unmarshal(bytes.TrimSpace(lb), &entry); err != nil || entry.Level != "error" || !strings.Contains(entry.Msg, "does not exist") {
		t.Errorf("--log: %q (%v); want a JSON error entry", lb, err)
	}
}

// TestRuntimeCLIKilled: SIGKILL of msb-runtime create while the VM boots,
// and of a running container's VMM: nothing is left behind.
func TestRuntimeCLIKilled(t *testing.T) {
	requireVM(t)
	root := stateRoot(t)
	b := bundle(t, []string{"sleep", "600"}, nil)
	var errb lockedBuffer
	r := underReaper(t, root, nil, io.Discard, &errb, "create", "--bundle", b, "mid")
	deadline := time.Now().Add(time.Minute)
	for len(processesNaming(root+"/vms/mid")) == 0 || len(processesNaming(ociruntime.SocketDir(root))) == 0 { // VMM and qemu
		if time.Now().After(deadline) {
			t.Fatal("no VM booting")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range processesNaming(root) {
		// msb-runtime create itself, not the reaper that runs it.
		pid, cmdline, _ := strings.Cut(p, ": ")
		if strings.HasPrefix(cmdline, msbRuntime+" ") && strings.Contains(cmdline, " create ") {
			n, _ := strconv.Atoi(pid)
			_ = syscall.Kill(n, syscall.SIGKILL)
		}
	}
	if _, code := r.next(t, time.Minute); code != 137 {
		t.Fatalf("create exited %d, want killed: %s", code, errb.String())
	}
	assertNothingLeftAt(t, root)

	r = underReaper(t, root, nil, io.Discard, &errb, "run", "--detach", "--bundle", b, "victim")
	if _, code := r.next(t, 3*time.Minute); code != 0 {
		t.Fatalf("run --detach: exit %d: %s", code, errb.String())
	}
	pid := cliStateOf(t, root, "victim").Pid
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if p, code := r.next(t, time.Minute); p != pid || code != 137 {
		t.Fatalf("VMM %d: %d exited %d", pid, p, code)
	}
	if st := cliStateOf(t, root, "victim"); st.Status != "stopped" {
		t.Errorf("after the VMM was killed: %s", st.Status)
	}
	mustCLI(t, root, "delete", "victim")
	assertNothingLeftAt(t, root)
}

// assertNothingLeftAt: no file under root and no process naming it.
func assertNothingLeftAt(t *testing.T, root string) {
	t.Helper()
	assertNothingLeft(t, root)
	deadline := time.Now().Add(10 * time.Second)
	for len(processesNaming(root+"/")) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("processes left: %v", processesNaming(root+"/"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
