package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// taskPid is the PID column of `ctr task ls` for id (0 if absent).
func (e *shimEnv) taskPid(t *testing.T, id string) int {
	t.Helper()
	for _, l := range strings.Split(e.MustCtr("task", "ls"), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == id {
			pid, _ := strconv.Atoi(f[1])
			return pid
		}
	}
	return 0
}

// podAnn are CRI's annotations of a container of type typ in pod sb.
func podAnn(sb, typ string) []string {
	return []string{"--annotation", "io.kubernetes.cri.container-type=" + typ,
		"--annotation", "io.kubernetes.cri.sandbox-id=" + sb}
}

// runPodSandbox runs pod sb's sandbox (sleep) with ctr run's flags,
// removed at cleanup, and returns its task pid once it runs.
func (e *shimEnv) runPodSandbox(t *testing.T, sb string, flags ...string) int {
	t.Helper()
	a := append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, flags...), podAnn(sb, "sandbox")...)
	e.MustCtr(append(a, e.image, sb, "sleep", "600")...)
	t.Cleanup(func() { e.remove(t, sb) })
	e.waitStatus(t, sb, "RUNNING", time.Minute)
	pid := e.taskPid(t, sb)
	if pid == 0 {
		t.Fatal("no pid for the sandbox task")
	}
	return pid
}

// TestShimPodSharesVM runs a pod the way CRI does (ADR 007): a sandbox
// container, then an app container of the same sandbox id that joins the
// sandbox's network namespace by its host path. Both must run in one VM
// (same guest boot id) and one network namespace; deleting the app
// container keeps the VM, deleting the sandbox ends it.
func TestShimPodSharesVM(t *testing.T) {
	e := startShimEnv(t)
	const sb, app = "pod-sb", "pod-app"
	run := func(id string, flags []string, args ...string) {
		a := append([]string{"run", "-d", "--runtime", msbRuntimeType}, flags...)
		e.MustCtr(append(append(a, e.image, id), args...)...)
	}
	ann := func(typ string) []string { return podAnn(sb, typ) }
	pid := e.runPodSandbox(t, sb)

	start := time.Now()
	run(app, append(ann("container"), "--with-ns", "network:/proc/"+strconv.Itoa(pid)+"/ns/net"), "sleep", "600")
	appGone := false
	t.Cleanup(func() {
		if !appGone {
			e.remove(t, app)
		}
	})
	e.waitStatus(t, app, "RUNNING", time.Minute)
	t.Logf("app container running %s after ctr run", time.Since(start).Round(time.Millisecond))
	if got := e.taskPid(t, app); got != pid {
		t.Fatalf("app task pid %d, sandbox %d: not the same VM", got, pid)
	}

	n := 0
	read := func(id, cmd string) string {
		n++
		out := e.MustCtr("task", "exec", "--exec-id", "x"+strconv.Itoa(n), id, "sh", "-c", cmd)
		return strings.TrimSpace(out)
	}
	const bootID, netns = "cat /proc/sys/kernel/random/boot_id", "readlink /proc/self/ns/net"
	b1, b2 := read(sb, bootID), read(app, bootID)
	if b1 == "" || b1 != b2 {
		t.Fatalf("boot ids: sandbox %q, app %q", b1, b2)
	}
	n1, n2 := read(sb, netns), read(app, netns)
	if n1 == "" || n1 != n2 {
		t.Fatalf("network namespaces: sandbox %q, app %q", n1, n2)
	}
	// The app's own rootfs, not the sandbox's: a file made in one is not
	// in the other.
	read(app, "touch /only-in-app")
	if out := read(sb, "test -e /only-in-app && echo shared || echo separate"); out != "separate" {
		t.Fatalf("rootfs: %s", out)
	}
	// The pod VM's qemu is an unprivileged user (ADR 022), and the app's
	// rootfs, bound in after the start, keeps its owners in the guest.
	if os.Getenv("MSB_TEST_NO_JAIL") != "1" {
		qemu := childNamed(t, pid, "qemu")
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", qemu))
		if err != nil {
			t.Fatal(err)
		}
		checkQEMUUnprivileged(t, qemu, string(status))
		if out := read(app, "stat -c %u:%g /bin/busybox; chown 1000:1000 /only-in-app && stat -c %u:%g /only-in-app"); out != "0:0\n1000:1000" {
			t.Errorf("ownership in the app's rootfs: %q", out)
		}
	}

	e.remove(t, app)
	appGone = true
	if got := read(sb, bootID); got != b1 {
		t.Fatalf("after deleting the app container the sandbox's boot id is %q, was %q", got, b1)
	}
	if st := e.taskStatus(sb); st != "RUNNING" {
		t.Fatalf("sandbox %s after the app's delete", st)
	}
}

// TestShimPodMountsSandboxFirst runs a pod whose sandbox names a host
// netns, as CRI does with CNI's (the guest makes its own; an app container
// naming the same path joins that), gives the app container a read-only
// directory bind and a file bind (exposed through the pod share), refuses
// a container naming another host namespace, then deletes the sandbox
// first: the VM ends, the app container's task stops, nothing is left.
func TestShimPodMountsSandboxFirst(t *testing.T) {
	e := startShimEnv(t)
	const sb, app = "pod2-sb", "pod2-app"
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("from-dir\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "podfile")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Host submounts of read-only volumes, as runc has them: read-only
	// under "rro", writable under "ro" (only the volume's own mount).
	dir2 := t.TempDir()
	for _, d := range []string{dir, dir2} {
		sub := filepath.Join(d, "sub")
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Unmount(sub, unix.MNT_DETACH) })
		if err := os.WriteFile(filepath.Join(sub, "s"), []byte("in-sub\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ann := func(typ string) []string {
		return []string{"--annotation", "io.kubernetes.cri.container-type=" + typ,
			"--annotation", "io.kubernetes.cri.sandbox-id=" + sb}
	}
	netns := "msbtest-pod-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", netns).Run() })
	withNS := []string{"--with-ns", "network:/var/run/netns/" + netns}
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, append(ann("sandbox"), withNS...)...), e.image, sb, "sleep", "600")...)
	sbGone := false
	t.Cleanup(func() {
		if !sbGone {
			e.remove(t, sb)
		}
	})
	e.waitStatus(t, sb, "RUNNING", time.Minute)

	bad := append(ann("container"), "--with-ns", "network:/proc/1/ns/net")
	_, stderr, err := e.Ctr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, bad...), e.image, "pod2-bad", "true")...)
	_, _, _ = e.Ctr("container", "delete", "pod2-bad") // its create failed: no task
	if err == nil || !strings.Contains(stderr, "only the pod sandbox's namespaces") {
		t.Fatalf("joining another host netns: err %v, stderr %s", err, stderr)
	}

	flags := append(append(ann("container"), withNS...),
		"--mount", "type=bind,src="+dir+",dst=/data,options=rbind:ro:rro",
		"--mount", "type=bind,src="+dir2+",dst=/data2,options=rbind:ro",
		"--mount", "type=bind,src="+file+",dst=/etc/podfile,options=rbind:rw")
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, flags...), e.image, app, "sleep", "600")...)
	t.Cleanup(func() { e.remove(t, app) })
	e.waitStatus(t, app, "RUNNING", time.Minute)

	out := e.MustCtr("task", "exec", "--exec-id", "m1", app, "sh", "-c",
		"cat /data/hello /etc/podfile /data/sub/s; touch /data/x 2>/dev/null && echo writable || echo read-only; touch /data/sub/x 2>/dev/null && echo sub-writable || echo sub-read-only; "+
			"touch /data2/x 2>/dev/null && echo writable || echo read-only; touch /data2/sub/x && echo sub-writable || echo sub-read-only")
	if out != "from-dir\nfrom-file\nin-sub\nread-only\nsub-read-only\nread-only\nsub-writable\n" {
		t.Fatalf("app mounts: %q", out)
	}
	if os.Getenv("MSB_TEST_NO_JAIL") != "1" {
		// The app's binds live in the jailed qemu's mount namespace only
		// (ADR 019): none below the pod dir (<state dir>/containers) on
		// the host, so a volume's owner can unmount its submount and
		// remove it while the container runs (critest's read-only mount
		// specs do).
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], e.stateRoot+"/") && strings.Contains(f[4], "/containers/") {
				t.Errorf("a pod member's bind on the host: %s", l)
			}
		}
		if err := unix.Unmount(filepath.Join(dir2, "sub"), unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(dir2); err != nil {
			t.Fatalf("remove a running pod member's volume on the host: %v", err)
		}
		if out := e.MustCtr("task", "exec", "--exec-id", "m2", app, "cat", "/data/hello", "/data/sub/s"); out != "from-dir\nin-sub\n" {
			t.Fatalf("app mounts after removing another volume's source: %q", out)
		}
	}
	n1 := e.MustCtr("task", "exec", "--exec-id", "n1", sb, "readlink", "/proc/self/ns/net")
	n2 := e.MustCtr("task", "exec", "--exec-id", "n2", app, "readlink", "/proc/self/ns/net")
	if n1 == "" || n1 != n2 {
		t.Fatalf("network namespaces: sandbox %q, app %q", n1, n2)
	}

	e.remove(t, sb)
	sbGone = true
	e.waitStatus(t, app, "STOPPED", time.Minute)
}

// TestShimPodShimKilled: a pod's shim killed with SIGKILL leaves its app
// container's binds below the pod VM's state dir; containerd's cleanup
// must unmount them before it removes that dir, so the app's read-write
// host directory keeps its files.
func TestShimPodShimKilled(t *testing.T) {
	e := startShimEnv(t)
	const sb, app = "pod3-sb", "pod3-app"
	dir := t.TempDir()
	keep := filepath.Join(dir, "keep")
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ann := func(typ string) []string {
		return []string{"--annotation", "io.kubernetes.cri.container-type=" + typ,
			"--annotation", "io.kubernetes.cri.sandbox-id=" + sb}
	}
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, ann("sandbox")...), e.image, sb, "sleep", "600")...)
	e.waitStatus(t, sb, "RUNNING", time.Minute)
	flags := append(ann("container"), "--mount", "type=bind,src="+dir+",dst=/data,options=rbind:rw")
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, flags...), e.image, app, "sleep", "600")...)
	e.waitStatus(t, app, "RUNNING", time.Minute)

	e.killShim(t, sb)
	e.waitShimDeletes()
	e.assertClean(t)
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("the app's host volume lost its file: %v", err)
	}
	for _, id := range []string{app, sb} {
		_, _, _ = e.Ctr("task", "delete", id)
		e.MustCtr("container", "delete", id)
	}
	e.waitShimDeletes()
}

// TestShimNamespaceJoin: nerdctl's --net/--ipc/--pid container:<id> (its
// spec names the other task's /proc/<pid>/ns/<type>, as ctr --with-ns
// does here) through the shim joins that container's VM (ADR 030): the
// loopback, IPC namespace, processes and guest kernel are shared, one
// qemu runs, the member reports the VM's pid; removing the owner ends
// the member with 137, and nothing is left.
func TestShimNamespaceJoin(t *testing.T) {
	e := startShimEnv(t)
	e.startDetached(t, "web", "sh", "-c", "mkdir -p /www; echo msb-web > /www/index.html; exec httpd -f -p 127.0.0.1:80 -h /www")
	e.waitStatus(t, "web", "RUNNING", 2*time.Minute)
	pid := e.taskPid(t, "web")
	web := fields(e.MustCtr("task", "exec", "--exec-id", "info", "web", "sh", "-c", "echo boot=$(cat /proc/sys/kernel/random/boot_id) ipc=$(readlink /proc/self/ns/ipc)"))
	join := func(types ...string) []string {
		var flags []string
		for _, typ := range types {
			name := map[string]string{"network": "net", "ipc": "ipc", "pid": "pid"}[typ]
			flags = append(flags, "--with-ns", fmt.Sprintf("%s:/proc/%d/ns/%s", typ, pid, name))
		}
		return flags
	}
	out, stderr, code, err := e.run("once", join("network", "ipc", "pid"), "sh", "-c", `for i in $(seq 1 100); do wget -qO- http://127.0.0.1:80/ && break; sleep 0.3; done;
echo boot=$(cat /proc/sys/kernel/random/boot_id) ipc=$(readlink /proc/self/ns/ipc); ps -o args | grep -q "^httpd -f" && echo sees=httpd`)
	if f := fields(out); err != nil || code != 0 || !strings.Contains(out, "msb-web") || f["boot"] != web["boot"] || f["ipc"] != web["ipc"] || f["sees"] != "httpd" {
		t.Fatalf("joined web's namespaces: exit %d %v, %q %s; want web's page, its guest kernel (boot id %s), its IPC namespace (%s) and its processes", code, err, out, stderr, web["boot"], web["ipc"])
	}
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, join("network")...), e.image, "side", "sleep", "600")...)
	e.waitStatus(t, "side", "RUNNING", 2*time.Minute)
	if p := e.taskPid(t, "side"); p != pid {
		t.Errorf("side's task pid %d, want web's VM's %d", p, pid)
	}
	n := 0
	for _, p := range e.vmProcesses() {
		if strings.Contains(p, "qemu-system") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("qemu processes: %d, want 1 (web's VM)", n)
	}
	// Removing web while side runs in its VM ends side (ADR 024, 030).
	e.MustCtr("task", "kill", "-s", "SIGKILL", "web")
	e.waitStatus(t, "side", "STOPPED", time.Minute)
	if code := e.deleteTask(t, "side"); code != 137 {
		t.Errorf("side's exit status after web's VM went: %d, want 137", code)
	}
	e.MustCtr("container", "delete", "side")
	e.remove(t, "web")
	e.assertClean(t)
}

// TestShimPodMemoryEmptyDir runs a pod as CRI does whose containers bind
// a tmpfs of the host mounted where kubelet mounts an emptyDir of medium
// Memory (ADR 032): each container sees a tmpfs of the guest (its size
// the host tmpfs's), one for the pod: a file written in one container is
// read in the other, and in a container started after both are gone;
// nothing reaches the host's tmpfs.
func TestShimPodMemoryEmptyDir(t *testing.T) {
	e := startShimEnv(t)
	const sb = "podmem-sb"
	vol := filepath.Join(t.TempDir(), "pods", "0b5c-uid", "volumes", "kubernetes.io~empty-dir", "cache")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", vol, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(vol, unix.MNT_DETACH) })
	pid := e.runPodSandbox(t, sb)
	n, gone := 0, map[string]bool{}
	sh := func(id, cmd string) string {
		n++
		return strings.TrimSpace(e.MustCtr("task", "exec", "--exec-id", "x"+strconv.Itoa(n), id, "sh", "-c", cmd))
	}
	member := func(id string) {
		flags := append(podAnn(sb, "container"), "--with-ns", "network:/proc/"+strconv.Itoa(pid)+"/ns/net",
			"--mount", "type=bind,src="+vol+",dst=/cache,options=rbind:rw")
		e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, flags...), e.image, id, "sleep", "600")...)
		t.Cleanup(func() {
			if !gone[id] {
				e.remove(t, id)
			}
		})
		e.waitStatus(t, id, "RUNNING", time.Minute)
	}
	member("podmem-a")
	member("podmem-b")

	if got := sh("podmem-a", "grep ' /cache ' /proc/mounts"); !strings.HasPrefix(got, "tmpfs /cache tmpfs rw") || !strings.Contains(got, "size=4096k") {
		t.Fatalf("/cache in the container: %q, want a tmpfs of 4096k", got)
	}
	sh("podmem-a", "echo from-a > /cache/f")
	if got := sh("podmem-b", "cat /cache/f"); got != "from-a" {
		t.Fatalf("the second container reads %q, want from-a", got)
	}
	if ents, err := os.ReadDir(vol); err != nil || len(ents) != 0 {
		t.Fatalf("the host's tmpfs holds %v (%v): want nothing", ents, err)
	}
	for _, id := range []string{"podmem-a", "podmem-b"} {
		e.remove(t, id)
		gone[id] = true
	}
	member("podmem-c")
	if got := sh("podmem-c", "cat /cache/f; grep -c ' /cache ' /proc/mounts"); got != "from-a\n1" {
		t.Fatalf("a container started after both: %q, want from-a and one /cache mount", got)
	}
}
