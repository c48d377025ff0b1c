package e2e

// Podman pods through msb-runtime (ADR 024): the infra container boots
// the pod's VM, the pod's other containers join it and share its guest
// network, IPC and UTS namespaces.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPodmanPod(t *testing.T) { testPodmanPod(t, startPodman(t)) }

// TestPodmanPodOverlay: the same with Podman's overlay rootfs, which
// qemu cannot id-map (ADR 022: it runs with the host's ids).
func TestPodmanPodOverlay(t *testing.T) { testPodmanPod(t, startPodmanDriver(t, "overlay")) }

func testPodmanPod(t *testing.T, p *podmanEnv) {
	p.mustPodman(t, "pod", "create", "--name", "pod1", "--share", "net,ipc,uts,pid", "--infra-image", podmanImage, "--infra-command", "/bin/pause")
	t.Cleanup(func() { _, _, _ = p.podman(t, "pod", "rm", "-f", "-t", "0", "pod1") })
	p.mustPodman(t, "run", "-d", "--pod", "pod1", "--name", "web", podmanImage,
		"sh", "-c", `hostname > /dev/shm/web-host; echo shm-from-web > /dev/shm/web; httpd -f -p 127.0.0.1:80 -h /www`)
	webID := strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.Id}}", "web"))
	infraID := strings.TrimSpace(p.mustPodman(t, "pod", "inspect", "-f", "{{.InfraContainerID}}", "pod1"))
	// The other member fetches over the pod's shared loopback, and
	// reports what it shares with web.
	script := `for i in $(seq 1 100); do wget -qO- http://127.0.0.1:80/ && break; sleep 0.3; done;
echo host=$(hostname) webhost=$(cat /dev/shm/web-host) shm=$(cat /dev/shm/web 2>&1);
echo ipc=$(readlink /proc/self/ns/ipc) boot=$(cat /proc/sys/kernel/random/boot_id);
ps -o args | grep -q "^httpd -f" && echo sees=httpd; ps -o args | grep -q "^sleep 2147483647" && echo sees=infra`
	out, errOut, code := p.podman(t, "run", "--rm", "--pod", "pod1", "--name", "client", podmanImage, "sh", "-c", script)
	if code != 0 || !strings.Contains(out, "msb-web") {
		t.Fatalf("client in the pod: exit %d, stdout %q, stderr %q: want the page web serves on 127.0.0.1", code, out, errOut)
	}
	if !strings.Contains(out, "sees=httpd") || !strings.Contains(out, "sees=infra") {
		t.Errorf("client's ps %q: want web's httpd and the infra's sleep (the pod's PID namespace)", out)
	}
	f := fields(out)
	if f["host"] == "" || f["host"] != f["webhost"] {
		t.Errorf("hostnames differ: client %q, web %q (want the pod's UTS namespace)", f["host"], f["webhost"])
	}
	if f["shm"] != "shm-from-web" {
		t.Errorf("/dev/shm: client sees %q, want web's file (the pod's IPC)", f["shm"])
	}
	webNS := fields(p.mustPodman(t, "exec", "web", "sh", "-c", `echo ipc=$(readlink /proc/self/ns/ipc) boot=$(cat /proc/sys/kernel/random/boot_id);
ps -o args | grep -q "^httpd -f" && echo sees=httpd; ps -o args | grep -q "^sleep 2147483647" && echo sees=infra`))
	if f["boot"] == "" || f["boot"] != webNS["boot"] {
		t.Errorf("boot ids: client %q, web %q: want one guest kernel", f["boot"], webNS["boot"])
	}
	if f["ipc"] == "" || f["ipc"] != webNS["ipc"] {
		t.Errorf("IPC namespaces: client %q, web %q: want the pod's", f["ipc"], webNS["ipc"])
	}

	// One VM: the infra container's pid runs the pod's only qemu; web's
	// pid is a host process in the same network namespace.
	infraPid := podmanPid(t, p, infraID)
	webPid := podmanPid(t, p, "web")
	if n := qemuBelow(infraPid) + qemuBelow(webPid); n != 1 || qemuBelow(infraPid) != 1 {
		t.Errorf("qemu processes of the pod: %d (infra %d), want 1 (the infra's)", n, qemuBelow(infraPid))
	}
	if a, b := nsLink(t, infraPid, "net"), nsLink(t, webPid, "net"); a != b {
		t.Errorf("web's pid %d is in network namespace %s, the infra's %s", webPid, b, a)
	}
	if a, b := nsLink(t, webPid, "ipc"), nsLink(t, os.Getpid(), "ipc"); a != b {
		t.Logf("web's pid in ipc %s (host %s)", a, b)
	}

	// A member with a terminal: its pid holds the pty conmon receives.
	out, errOut, code = p.podman(t, "run", "--rm", "-t", "--pod", "pod1", podmanImage, "sh", "-c", "tty; exit 6")
	if code != 6 || !strings.Contains(out, "/dev/pts/") {
		t.Errorf("run -t in the pod: exit %d (want 6), %q %q: want a guest pty", code, out, errOut)
	}

	// A member asking for more than the pod's VM gives is refused, and
	// leaves nothing.
	_, errOut, code = p.podman(t, "run", "--pod", "pod1", "--name", "big", "--memory", "8g", podmanImage, "true")
	if code == 0 || !strings.Contains(errOut, "linux.resources.memory.limit") || !strings.Contains(errOut, "joins the running VM of") {
		t.Errorf("member with --memory 8g: exit %d, %q: want a refusal naming the limit and the pod's VM", code, errOut)
	}
	bigID := strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.Id}}", "big"))
	if _, err := os.Stat(filepath.Join("/run/msb/vms", bigID)); err == nil {
		t.Errorf("state of the refused member left")
	}
	p.mustPodman(t, "rm", "-f", "big")

	// Deleting the infra while web runs is refused; podman stops members
	// first.
	if _, errOut, code := runMSB(t, "delete", "--force", infraID); code == 0 || !strings.Contains(errOut, "pod members that still run") {
		t.Errorf("msb-runtime delete --force of the infra with web running: exit %d, %q: want a refusal naming the members", code, errOut)
	}
	p.mustPodman(t, "pod", "stop", "-t", "2", "pod1")
	waitNoQEMU(t, infraPid)
	p.mustPodman(t, "pod", "start", "pod1")
	out = strings.TrimSpace(p.mustPodman(t, "exec", "web", "wget", "-qO-", "http://127.0.0.1:80/"))
	if out != "msb-web" {
		t.Errorf("after pod start: %q", out)
	}
	infraPid = podmanPid(t, p, infraID)
	p.mustPodman(t, "pod", "rm", "-f", "-t", "0", "pod1")
	waitNoQEMU(t, infraPid)
	for _, id := range []string{infraID, webID} {
		if _, err := os.Stat(filepath.Join("/run/msb/vms", id)); err == nil {
			t.Errorf("state of %s left after pod rm -f", id)
		}
		if procs := processesNaming(id); len(procs) > 0 {
			t.Errorf("processes of %s left after pod rm -f: %v", id, procs)
		}
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), infraID) || strings.Contains(string(b), "/run/msb/vms/"+webID) {
		t.Errorf("mounts left after pod rm -f")
	}
}

// fields reads "k=v" words.
func fields(s string) map[string]string {
	m := map[string]string{}
	for _, w := range strings.Fields(s) {
		if k, v, ok := strings.Cut(w, "="); ok {
			m[k] = v
		}
	}
	return m
}

func podmanPid(t *testing.T, p *podmanEnv, name string) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.State.Pid}}", name)))
	if err != nil || pid <= 0 {
		t.Fatalf("pid of %s: %d %v", name, pid, err)
	}
	return pid
}

// qemuBelow counts the qemu processes among pid's descendants.
func qemuBelow(pid int) int {
	n := 0
	lists, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, l := range lists {
		b, _ := os.ReadFile(l)
		for _, c := range strings.Fields(string(b)) {
			cp, _ := strconv.Atoi(c)
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cp)); strings.Contains(string(cmd), "qemu-system") {
				n++
			}
			n += qemuBelow(cp)
		}
	}
	return n
}

func nsLink(t *testing.T, pid int, ns string) string {
	t.Helper()
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitNoQEMU waits until the VMM process pid (and its qemu) has gone.
func waitNoQEMU(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("VMM process %d still runs", pid)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// runMSB runs msb-runtime (default --root, as Podman's) to its end.
func runMSB(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(msbRuntime, args...)
	cmd.Env = append(os.Environ(), "MSB_CONFIG="+configFile)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), exitCode(t, err)
}

// TestPodmanKubePlay: a two-container pod from a Kubernetes YAML; the
// infra image is the test's busybox with /bin/pause as its command
// (containers.conf infra_image: the default pause image would be
// pulled).
func TestPodmanKubePlay(t *testing.T) {
	p := startPodman(t)
	// kube play runs the infra image's own command.
	p.mustPodman(t, "import", "--change", "CMD=/bin/pause", filepath.Join(p.dir, "busybox.tar"), "msb.local/pause:latest")
	p.conf = filepath.Join(p.dir, "containers.conf")
	conf := "[engine]\ninfra_image = \"msb.local/pause:latest\"\n"
	if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	yaml := filepath.Join(p.dir, "pod.yaml")
	if err := os.WriteFile(yaml, []byte(`apiVersion: v1
kind: Pod
metadata:
  name: kpod
spec:
  containers:
  - name: web
    image: `+podmanImage+`
    imagePullPolicy: Never
    env: [{name: PATH, value: /bin}]
    command: ["httpd", "-f", "-p", "127.0.0.1:80", "-h", "/www"]
  - name: client
    image: `+podmanImage+`
    imagePullPolicy: Never
    env: [{name: PATH, value: /bin}]
    command: ["sh", "-c", "until wget -qO- http://127.0.0.1:80/; do sleep 0.3; done; echo fetched; exec sleep 100000"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _, _ = p.podman(t, "pod", "rm", "-f", "-t", "0", "kpod") })
	p.mustPodman(t, "kube", "play", yaml)
	waitLogs(t, p, "kpod-client", "fetched", 90*time.Second)
	if logs := p.mustPodman(t, "logs", "kpod-client"); !strings.Contains(logs, "msb-web") {
		t.Errorf("client logs %q: want web's page over the pod's loopback", logs)
	}
	infraID := strings.TrimSpace(p.mustPodman(t, "pod", "inspect", "-f", "{{.InfraContainerID}}", "kpod"))
	infraPid := podmanPid(t, p, infraID)
	n := qemuBelow(infraPid)
	for _, c := range []string{"kpod-web", "kpod-client"} {
		n += qemuBelow(podmanPid(t, p, c))
	}
	if n != 1 || qemuBelow(infraPid) != 1 {
		t.Errorf("qemu processes of the pod: %d, want 1 (the infra's)", n)
	}
	if out := p.mustPodman(t, "pod", "ps", "--format", "{{.Name}} {{.Status}} {{.NumberOfContainers}}"); !strings.Contains(out, "kpod Running 3") {
		t.Errorf("pod ps: %q, want kpod Running with 3 containers", out)
	}
	p.mustPodman(t, "pod", "rm", "-f", "-t", "0", "kpod")
	waitNoQEMU(t, infraPid)
	if _, err := os.Stat(filepath.Join("/run/msb/vms", infraID)); err == nil {
		t.Errorf("infra state left after pod rm -f")
	}
}

// TestDocker20NetworkContainer: Docker 20.10's --network container:<id>
// through msb-runtime joins the other container's VM (ADR 024): the
// loopback is shared, one guest kernel, one qemu.
func TestDocker20NetworkContainer(t *testing.T) {
	d := startDocker20(t)
	d.mustDocker(t, "run", "-d", "--runtime", "msb", "--name", "web", "--network", "none", "--ipc", "shareable",
		"msb.local/busybox", "httpd", "-f", "-p", "127.0.0.1:80", "-h", "/www")
	web := fields(d.mustDocker(t, "exec", "web", "sh", "-c", "echo boot=$(cat /proc/sys/kernel/random/boot_id) ipc=$(readlink /proc/self/ns/ipc)"))
	out := d.mustDocker(t, "run", "--rm", "--runtime", "msb", "--network", "container:web", "--ipc", "container:web", "--pid", "container:web", "msb.local/busybox",
		"sh", "-c", `for i in $(seq 1 100); do wget -qO- http://127.0.0.1:80/ && break; sleep 0.3; done;
echo boot=$(cat /proc/sys/kernel/random/boot_id) ipc=$(readlink /proc/self/ns/ipc); ps -o args | grep -q "^httpd -f" && echo sees=httpd`)
	if f := fields(out); !strings.Contains(out, "msb-web") || f["boot"] != web["boot"] || f["ipc"] != web["ipc"] || f["sees"] != "httpd" {
		t.Fatalf("--network/--ipc/--pid container:web: %q, want web's page, its guest kernel (boot id %s), its IPC namespace (%s) and its processes", out, web["boot"], web["ipc"])
	}
	d.mustDocker(t, "run", "-d", "--runtime", "msb", "--name", "side", "--network", "container:web", "msb.local/busybox", "sleep", "600")
	pid := func(name string) int {
		n, err := strconv.Atoi(strings.TrimSpace(d.mustDocker(t, "inspect", "-f", "{{.State.Pid}}", name)))
		if err != nil || n <= 0 {
			t.Fatalf("pid of %s: %v", name, err)
		}
		return n
	}
	webPid, sidePid := pid("web"), pid("side")
	if qemuBelow(webPid) != 1 || qemuBelow(sidePid) != 0 {
		t.Errorf("qemu processes: web %d, side %d; want 1 and 0", qemuBelow(webPid), qemuBelow(sidePid))
	}
	// Removing web while side runs in its VM: Docker kills web, its VM
	// goes, and side ends with it (137); runc would leave side running
	// in web's network namespace (ADR 024).
	d.mustDocker(t, "rm", "-f", "web")
	waitNoQEMU(t, webPid)
	d.waitExited(t, "side", 137)
	d.mustDocker(t, "rm", "side")
	if procs := processesNaming("member-relay"); len(procs) > 0 {
		t.Errorf("member relays left: %v", procs)
	}
}
