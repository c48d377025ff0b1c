package e2e

// Podman 4.3 (Debian 12) with msb-runtime as its OCI runtime: conmon calls
// create/start/state/exec/kill/delete as it calls runc, reaps the VMM
// process for the container's exit status and reads its stdio pipes.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestPodmanRun(t *testing.T) {
	p := startPodman(t)
	rel := guestRelease(t)
	out, errOut, code := p.podman(t, "run", "--rm", "--network", "none", podmanImage, "uname", "-r")
	if code != 0 || strings.TrimSpace(out) != rel {
		t.Fatalf("run: exit %d, stdout %q (want the guest kernel %q), stderr %q", code, out, rel, errOut)
	}
	out, errOut, code = p.podman(t, "run", "--rm", "--network", "none", podmanImage, "sh", "-c", "echo out; echo err >&2; exit 3")
	if code != 3 || strings.TrimSpace(out) != "out" || !strings.Contains(errOut, "err") {
		t.Fatalf("run: exit %d (want 3), stdout %q, stderr %q", code, out, errOut)
	}
}

func TestPodmanLifecycle(t *testing.T) {
	p := startPodman(t)
	vol := t.TempDir()
	if err := os.WriteFile(filepath.Join(vol, "in"), []byte("from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.mustPodman(t, "run", "-d", "--name", "life", "--network", "none", "-v", vol+":/vol", podmanImage,
		"sh", "-c", `trap "echo got-term; exit 143" TERM; cat /vol/in; echo from-guest > /vol/out; echo ready; while :; do sleep 0.2; done`)
	waitLogs(t, p, "life", "ready", 60*time.Second)
	if b, err := os.ReadFile(filepath.Join(vol, "out")); err != nil || string(b) != "from-guest\n" {
		t.Fatalf("rw volume: %q %v", b, err)
	}
	if logs := p.mustPodman(t, "logs", "life"); !strings.Contains(logs, "from-host") {
		t.Fatalf("logs %q: no from-host", logs)
	}
	out, errOut, code := p.podman(t, "exec", "life", "sh", "-c", "echo in-exec; uname -r; exit 4")
	if code != 4 || !strings.Contains(out, "in-exec") || !strings.Contains(out, guestRelease(t)) {
		t.Fatalf("exec: exit %d (want 4), stdout %q, stderr %q", code, out, errOut)
	}

	// exec -it on a terminal of the test's: a pty in the guest, sized like
	// the test's.
	checkExecTTY(t, p.cmd(t.Context(), "exec", "-it", "life", "sh"))

	// stop: SIGTERM reaches the container, its status comes back.
	p.mustPodman(t, "stop", "-t", "30", "life")
	if st := strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.State.ExitCode}}", "life")); st != "143" {
		t.Errorf("exit code after stop: %s, want 143", st)
	}
	if logs := p.mustPodman(t, "logs", "life"); !strings.Contains(logs, "got-term") {
		t.Errorf("logs after stop %q: no got-term (output lost?)", logs)
	}
	// A stopped container starts again.
	p.mustPodman(t, "start", "life")
	waitLogsCount(t, p, "life", "ready", 2, 60*time.Second)
	p.mustPodman(t, "rm", "-f", "-t", "0", "life")
}

// TestPodmanVMMKilled: the container's pid is the VMM process; killing it
// stops the container (137) and podman rm leaves nothing.
func TestPodmanVMMKilled(t *testing.T) {
	p := startPodman(t)
	p.mustPodman(t, "run", "-d", "--name", "victim", "--network", "none", podmanImage, "sleep", "600")
	pid, err := strconv.Atoi(strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.State.Pid}}", "victim")))
	if err != nil || pid <= 0 {
		t.Fatalf("pid: %v", err)
	}
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); !strings.Contains(string(b), "vmm") {
		t.Fatalf("podman's pid %d is not the VMM process: %q", pid, b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "victim"))
		if st == "exited 137" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGKILL of the VMM: %q, want exited 137", st)
		}
		time.Sleep(300 * time.Millisecond)
	}
	p.mustPodman(t, "rm", "victim")
}

// TestPodmanNetwork: podman's default network (CNI bridge in the test's
// namespace) and -p reach a web server in the VM.
func TestPodmanNetwork(t *testing.T) {
	p := startPodman(t)
	p.mustPodman(t, "run", "-d", "--name", "web", "-p", "8080:80", podmanImage, "httpd", "-f", "-p", "80", "-h", "/www")
	for _, url := range []string{"http://127.0.0.1:8080/", "http://10.88.0.1:8080/"} {
		body, err := httpGet(p.netns, url, 60*time.Second)
		if err != nil || body != "msb-web\n" {
			t.Fatalf("GET %s from the test's namespace: %q %v", url, body, err)
		}
	}
	out, errOut, code := p.podman(t, "exec", "web", "sh", "-c", "wget -qO- http://10.88.0.1:9/ 2>&1; ip -4 route")
	if !strings.Contains(out, "default via 10.88.0.1") {
		t.Fatalf("container route: exit %d %q %q", code, out, errOut)
	}
}

// checkExecTTY runs cmd, an engine's `exec -it C sh`, on a 33x101 pty of
// the test's: the shell must have a guest pty of that size and its exit
// status must come back.
func checkExecTTY(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	o := startOnPty(t, cmd, 33, 101)
	o.waitFor(t, regexp.MustCompile(`# `), 60*time.Second)
	if _, err := o.master.Write([]byte("tty; stty size; exit 5\n")); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, cmd.Wait()); code != 5 {
		t.Errorf("exec -it: exit %d, want 5", code)
	}
	if text := o.all(t); !strings.Contains(text, "/dev/pts/") || !strings.Contains(text, "33 101") {
		t.Errorf("exec -it output %q: want a guest pty of 33x101", text)
	}
}

func waitLogs(t *testing.T, p *podmanEnv, name, want string, d time.Duration) {
	t.Helper()
	waitLogsCount(t, p, name, want, 1, d)
}

func waitLogsCount(t *testing.T, p *podmanEnv, name, want string, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		out, _, _ := p.podman(t, "logs", name)
		if strings.Count(out, want) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("podman logs %s: %d× %q not seen in %s; got %q", name, n, want, d, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestPodmanConmonKilled: with conmon killed the container runs on (as
// with runc); podman rm -f stops it. Podman then calls no delete (it
// learns exits from conmon), so the VMM itself unstages what only the
// running VM needed: no process and no mount is left, only the record a
// later `msb-runtime delete` removes, as runc's state.json would be.
func TestPodmanConmonKilled(t *testing.T) {
	p := startPodman(t)
	p.mustPodman(t, "run", "-d", "--name", "ck", "--network", "none", podmanImage, "sleep", "600")
	f := strings.Fields(p.mustPodman(t, "inspect", "-f", "{{.Id}} {{.State.ConmonPid}} {{.State.Pid}}", "ck"))
	id := f[0]
	conmon, _ := strconv.Atoi(f[1])
	vmmPid, _ := strconv.Atoi(f[2])
	if err := syscall.Kill(conmon, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if _, err := os.Stat("/proc/" + strconv.Itoa(vmmPid)); err != nil {
		t.Fatalf("the container died with conmon: %v", err)
	}
	p.mustPodman(t, "rm", "-f", "-t", "1", "ck")
	dir := filepath.Join("/run/msb/vms", id)
	deadline := time.Now().Add(30 * time.Second)
	for {
		procs := processesNaming(dir)
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		if len(procs) == 0 && !strings.Contains(string(mi), dir) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after rm -f: processes %v, mounts below %s: %v", procs, dir, strings.Contains(string(mi), dir))
		}
		time.Sleep(250 * time.Millisecond)
	}
	cmd := runtimeCmd("/run/msb", "delete", id)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("msb-runtime delete: %v: %s", err, out)
	}
}

// TestPodmanNetworkConnect: podman network connect and disconnect on a
// running msb container reach its guest through msb-runtime's path (the
// VMM process follows the container's network namespace, ADR 029).
func TestPodmanNetworkConnect(t *testing.T) {
	p := startPodman(t)
	p.mustPodman(t, "network", "create", "--subnet", "10.92.0.0/24", "side")
	p.mustPodman(t, "run", "-d", "--name", "web", podmanImage, "sh", "-c", "mkdir -p /side; echo side-ok > /side/index.html; exec httpd -f -p 80 -h /side")
	p.mustPodman(t, "run", "-d", "--name", "client", "--network", "side", "--ip", "10.92.0.20", podmanImage, "sleep", "600")
	t.Cleanup(func() { p.podman(t, "rm", "-f", "-t", "0", "web", "client") })
	fetch := func(url string) (string, error) {
		out, errOut, code := p.podman(t, "exec", "client", "timeout", "5", "wget", "-q", "-O-", url)
		if code != 0 {
			return out, fmt.Errorf("exit %d: %s", code, errOut)
		}
		return out, nil
	}
	const url = "http://10.92.0.10/"
	p.mustPodman(t, "network", "connect", "--ip", "10.92.0.10", "side", "web")
	waitFetch(t, fetch, url, true)
	p.mustPodman(t, "network", "disconnect", "side", "web")
	waitFetch(t, fetch, url, false)
	if addrs := p.mustPodman(t, "exec", "web", "ip", "-o", "addr"); strings.Contains(addrs, "10.92.0.10") {
		t.Errorf("web's guest after disconnect:\n%s\nwant no 10.92.0.10", addrs)
	}
}
