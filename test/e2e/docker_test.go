package e2e

// Docker Engine v29 end to end: `docker run --runtime msb` and the
// commands Docker users run against a container, each answered from
// inside the container's VM.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The default run: Docker's bridge network, its rw file binds of
// /etc/hosts, /etc/hostname and /etc/resolv.conf from its data root, and
// the container's output from the guest kernel.
func TestDockerRunDefault(t *testing.T) {
	d := startDocker(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	host := unix.ByteSliceToString(u.Release[:])
	out := strings.TrimSpace(d.mustDocker(t, "run", "--rm", "--runtime", "msb", d.image, "uname", "-r"))
	if out == "" || out == host {
		t.Fatalf("docker run uname -r: %q; want the guest kernel, not the host's %q", out, host)
	}
}

// A detached web server the way Docker users run one: published port,
// rw dir and file binds from another filesystem, tmpfs, ulimit, memory and
// CPU limits, env, workdir, hostname; then logs, exec (plain and -it),
// stats, pause/unpause, update, stop, restart, rm — each answered by the
// VM.
func TestDockerLifecycle(t *testing.T) {
	d := startDocker(t)
	other := otherFS(t)
	vol := filepath.Join(other, "vol")
	file := filepath.Join(other, "file")
	if err := os.Mkdir(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("from-host\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, d.netns, "0.0.0.0:9090", "gateway-ok")

	d.mustDocker(t, "run", "-d", "--name", "web", "--runtime", "msb", "-p", "8080:8000",
		"-v", vol+":/data", "-v", file+":/etc/msb-file", "--tmpfs", "/scratch",
		"--ulimit", "nofile=1234:1234", "-m", "300m", "--cpus", "1", "-e", "FOO=bar",
		"-w", "/data", "--hostname", "webhost", d.image,
		"sh", "-c", "echo started; mkdir -p /www; echo hello-from-vm > /www/index.html; exec httpd -f -p 8000 -h /www")
	if body, err := httpGet(d.netns, "http://127.0.0.1:8080/", time.Minute); err != nil || body != "hello-from-vm\n" {
		t.Fatalf("published port 8080 from dockerd's namespace: %q, %v", body, err)
	}
	if logs := d.mustDocker(t, "logs", "web"); logs != "started\n" {
		t.Errorf("docker logs: %q", logs)
	}

	out := d.mustDocker(t, "exec", "web", "sh", "-c",
		`echo "$FOO"; pwd; hostname; ulimit -n; cat /etc/msb-file; echo guest >> /etc/msb-file; echo wrote > /data/g; `+
			`grep -c ' /scratch tmpfs ' /proc/mounts; `+cgroupFile("memory.max")+"; "+cgroupFile("cpu.max")+"; "+
			`wget -q -O- http://`+dockerBridgeGW+`:9090/; echo; uname -r`)
	want := []string{"bar", "/data", "webhost", "1234", "from-host", "1", "314572800", "100000 100000", "gateway-ok"}
	got := strings.Split(strings.TrimSpace(out), "\n")
	if len(got) != len(want)+1 || strings.Join(got[:len(want)], "|") != strings.Join(want, "|") {
		t.Fatalf("exec in web:\n%s\nwant the lines %q and the guest kernel", out, want)
	}
	if b, _ := os.ReadFile(file); string(b) != "from-host\nguest\n" {
		t.Errorf("file bind on the host after the guest's append: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(vol, "g")); string(b) != "wrote\n" {
		t.Errorf("dir bind on the host after the guest's write: %q", b)
	}

	// exec -it: a terminal in the guest, its output on the caller's pty.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := d.dockerCmd(ctx, "exec", "-it", "web", "sh", "-c", "tty; echo tty-ok")
	pty := startOnPty(t, cmd, 24, 80)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("docker exec -it: %v: %q", err, pty.text())
	}
	if text := pty.all(t); !ptsLine.MatchString(text) || !strings.Contains(text, "tty-ok") {
		t.Errorf("docker exec -it output: %q", text)
	}

	// docker top filters the host's ps by the task's pids: the VMM process
	// (ADR 008), never an unrelated host process.
	if top := d.mustDocker(t, "top", "web"); !strings.Contains(top, "msb-runtime vmm") || strings.Count(strings.TrimSpace(top), "\n") != 1 {
		t.Errorf("docker top: %q; want the header and the VMM process", top)
	}

	stats := d.mustDocker(t, "stats", "--no-stream", "--format", "{{.MemUsage}} {{.PIDs}}", "web")
	if f := strings.Fields(stats); len(f) < 4 || strings.HasPrefix(stats, "0B") || f[len(f)-1] == "0" {
		t.Errorf("docker stats: %q; want the guest container's memory and pids", stats)
	}

	d.mustDocker(t, "pause", "web")
	if st := d.state(t, "web"); st != "paused" {
		t.Errorf("after pause: %s", st)
	}
	d.mustDocker(t, "unpause", "web")
	// The VM has 428 MiB (-m 300m plus overhead_mib) and may grow to 856
	// (resize_memory_factor 2, ADR 031): lowering and growing within it
	// reach the guest; past it is refused and the guest keeps its limit.
	d.mustDocker(t, "update", "-m", "200m", "--memory-swap", "200m", "web")
	d.mustDocker(t, "update", "-m", "400m", "--memory-swap", "400m", "web")
	if _, err := d.docker("update", "-m", "2g", "--memory-swap", "2g", "web"); err == nil || !strings.Contains(err.Error(), "linux.resources.memory.limit 2147483648") || !strings.Contains(err.Error(), "resize_memory_factor") {
		t.Errorf("docker update -m 2g past the VM's headroom: %v; want refused naming the limit and the headroom", err)
	}
	if out := d.mustDocker(t, "exec", "web", "sh", "-c", cgroupFile("memory.max")); strings.TrimSpace(out) != "419430400" {
		t.Errorf("memory.max after docker update -m 400m and a refused -m 2g: %q", out)
	}

	d.mustDocker(t, "stop", "-t", "2", "web")
	if st := d.state(t, "web"); st != "exited" {
		t.Errorf("after stop: %s", st)
	}
	d.mustDocker(t, "restart", "web")
	if body, err := httpGet(d.netns, "http://127.0.0.1:8080/", time.Minute); err != nil || body != "hello-from-vm\n" {
		t.Fatalf("published port after restart: %q, %v", body, err)
	}
	d.mustDocker(t, "rm", "-f", "web")
}

// Exit codes through run and wait, the user, a read-only rootfs.
func TestDockerExitCodesUserReadOnly(t *testing.T) {
	d := startDocker(t)
	code, out := d.exitCode(t, "run", "--rm", "--runtime", "msb", "-u", "1000:1001", "--read-only", "--network", "none", d.image,
		"sh", "-c", "id -u; id -g; touch /x 2>/dev/null || echo read-only; exit 3")
	if code != 3 || out != "1000\n1001\nread-only\n" {
		t.Errorf("docker run -u --read-only: exit %d, %q", code, out)
	}
	id := strings.TrimSpace(d.mustDocker(t, "run", "-d", "--runtime", "msb", d.image, "sh", "-c", "sleep 1; exit 7"))
	if out := strings.TrimSpace(d.mustDocker(t, "wait", id)); out != "7" {
		t.Errorf("docker wait: %q, want 7", out)
	}
	d.mustDocker(t, "rm", id)
}

// state is the container's .State.Status.
func (d *dockerEnv) state(t *testing.T, name string) string {
	t.Helper()
	return strings.TrimSpace(d.mustDocker(t, "inspect", "-f", "{{.State.Status}}", name))
}

// cgroupFile is shell that prints a cgroup v2 file of the calling
// process's cgroup in the guest, whether or not it has a cgroup namespace
// (Docker on a cgroup v1 host gives none: /proc/self/cgroup names
// /docker/<id>).
func cgroupFile(name string) string {
	return `cat "/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/` + name + `"`
}

// What cannot work in a VM is refused with the reason and what to do
// instead, and leaves nothing behind; docker run returns at once.
func TestDockerRefused(t *testing.T) {
	d := startDocker(t)
	d.mustDocker(t, "run", "-d", "--name", "other", "--runtime", "msb", d.image, "sleep", "600")
	for _, c := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--network", "host"}, "host networking, which a VM cannot share"},
		{[]string{"--device", "/dev/loop-control"}, "cannot use the host's device nodes"},
		{[]string{"--privileged"}, "cannot use the host's device nodes"},
		{[]string{"--ipc", "host"}, "hostIPC, --ipc host"},
		{[]string{"--pid", "host"}, "hostPID, --pid host"},
	} {
		args := append(append([]string{"run", "--rm", "--runtime", "msb"}, c.flags...), d.image, "true")
		out, err := d.docker(args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("docker run %s: %v (%q); want an error naming %q", strings.Join(c.flags, " "), err, out, c.want)
		}
	}
	d.mustDocker(t, "rm", "-f", "other")
	if out := d.mustDocker(t, "ps", "-aq"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left: %s", out)
	}
}

// TestDockerNetworkContainer: Docker's --network, --ipc and --pid
// container:<id> (Compose's network_mode: service:x) through the shim
// joins the other container's VM (ADR 030): the loopback, IPC namespace,
// processes and guest kernel are shared, one qemu runs, and the joiner
// reports the VM's pid. Removing the owner ends the joiner (137).
func TestDockerNetworkContainer(t *testing.T) {
	d := startDocker(t)
	d.mustDocker(t, "run", "-d", "--runtime", "msb", "--name", "web", "--network", "none", "--ipc", "shareable",
		d.image, "sh", "-c", "mkdir -p /www; echo msb-web > /www/index.html; exec httpd -f -p 127.0.0.1:80 -h /www")
	web := fields(d.mustDocker(t, "exec", "web", "sh", "-c", "echo boot=$(cat /proc/sys/kernel/random/boot_id) ipc=$(readlink /proc/self/ns/ipc)"))
	out := d.mustDocker(t, "run", "--rm", "--runtime", "msb", "--network", "container:web", "--ipc", "container:web", "--pid", "container:web", d.image,
		"sh", "-c", `for i in $(seq 1 100); do wget -qO- http://127.0.0.1:80/ && break; sleep 0.3; done;
echo boot=$(cat /proc/sys/kernel/random/boot_id) ipc=$(readlink /proc/self/ns/ipc); ps -o args | grep -q "^httpd -f" && echo sees=httpd`)
	if f := fields(out); !strings.Contains(out, "msb-web") || f["boot"] != web["boot"] || f["ipc"] != web["ipc"] || f["sees"] != "httpd" {
		t.Fatalf("--network/--ipc/--pid container:web: %q, want web's page, its guest kernel (boot id %s), its IPC namespace (%s) and its processes", out, web["boot"], web["ipc"])
	}
	d.mustDocker(t, "run", "-d", "--runtime", "msb", "--name", "side", "--network", "container:web", d.image, "sleep", "600")
	pid := func(name string) int {
		n, err := strconv.Atoi(strings.TrimSpace(d.mustDocker(t, "inspect", "-f", "{{.State.Pid}}", name)))
		if err != nil || n <= 0 {
			t.Fatalf("pid of %s: %v", name, err)
		}
		return n
	}
	webPid := pid("web")
	if p := pid("side"); p != webPid || qemuBelow(webPid) != 1 {
		t.Errorf("side's pid %d, web's %d with %d qemu; want one VM, whose pid both report", p, webPid, qemuBelow(webPid))
	}
	d.mustDocker(t, "rm", "-f", "web")
	waitNoQEMU(t, webPid)
	d.waitExited(t, "side", 137)
	d.mustDocker(t, "rm", "side")
	if out := d.mustDocker(t, "ps", "-aq"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left: %s", out)
	}
}

// waitExited waits up to 30 s for docker inspect to show container name
// exited with code.
func (d *dockerEnv) waitExited(t *testing.T, name string, code int) {
	t.Helper()
	want := fmt.Sprintf("exited %d", code)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := strings.TrimSpace(d.mustDocker(t, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name))
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q, want %s", name, st, want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
