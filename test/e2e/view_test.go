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
)

// The pid msb reports for a container is the VMM process's; clients go
// into its mount namespace or read its /proc/<pid>/root as a container's
// (view/view.go). There they must find the container's rootfs, never the
// host's "/".

// TestPodmanCpRunning: `podman cp` of a running container (Podman 4.3
// copies at "/" in the mount namespace of the container's pid) copies
// into and out of the container, and `nsenter -t <pid> -m` shows its
// rootfs; the host's "/" is untouched.
func TestPodmanCpRunning(t *testing.T) {
	p := startPodmanDriver(t, "overlay")
	p.mustPodman(t, "run", "-d", "--name", "cp", "--network", "none", podmanImage,
		"sh", "-c", "echo in-guest > /from-guest && echo ready && exec sleep 600")
	waitLogs(t, p, "cp", "ready", 60*time.Second)
	name := fmt.Sprintf("msb-cp-%d", os.Getpid())
	hostPath := filepath.Join("/", name)
	in := filepath.Join(t.TempDir(), "in")
	if err := os.WriteFile(in, []byte("from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(hostPath) })
	p.mustPodman(t, "cp", in, "cp:/"+name)
	if _, err := os.Stat(hostPath); err == nil {
		t.Fatalf("podman cp into the running container wrote the host's %s", hostPath)
	}
	if out, errOut, code := p.podman(t, "exec", "cp", "cat", "/"+name); code != 0 || out != "from-host\n" {
		t.Errorf("the copied file in the guest: exit %d, %q, %q", code, out, errOut)
	}
	dir := t.TempDir()
	p.mustPodman(t, "cp", "cp:/from-guest", dir)
	if b, err := os.ReadFile(filepath.Join(dir, "from-guest")); err != nil || string(b) != "in-guest\n" {
		t.Errorf("podman cp out of the running container: %q %v", b, err)
	}
	// Host files are not the container's.
	if _, _, code := p.podman(t, "cp", "cp:/etc/shadow", dir); code == 0 {
		t.Errorf("podman cp of /etc/shadow from the container (which has none) copied the host's")
	}
	pid := strings.TrimSpace(p.mustPodman(t, "inspect", "-f", "{{.State.Pid}}", "cp"))
	out, err := exec.Command("nsenter", "-t", pid, "-m", "cat", "/from-guest").CombinedOutput()
	if err != nil || string(out) != "in-guest\n" {
		t.Errorf("nsenter -t %s -m cat /from-guest: %q %v", pid, out, err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%s/root/from-guest", pid)); err != nil {
		t.Errorf("/proc/%s/root is not the container's rootfs: %v", pid, err)
	}
	p.mustPodman(t, "rm", "-f", "-t", "0", "cp")
}

// TestShimTaskPidView: the task pid containerd reports (ctr task ls,
// nerdctl's inspect) has the container's rootfs as its root, as a runc
// container's has.
func TestShimTaskPidView(t *testing.T) {
	requireVM(t)
	e := startShimEnv(t)
	const id = "view"
	e.startDetached(t, id, "sh", "-c", "echo in-guest > /from-guest; exec sleep 600")
	e.waitStatus(t, id, "RUNNING", time.Minute)
	defer e.remove(t, id)
	pid := e.taskPid(t, id)
	root := "/proc/" + strconv.Itoa(pid) + "/root"
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(root + "/from-guest")
		if err == nil && string(b) == "in-guest\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/from-guest: %q %v; want the container's file", root, b, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := os.Stat(root + "/etc/shadow"); err == nil {
		t.Errorf("%s/etc/shadow exists: the host's root, not the container's", root)
	}
}

// TestPodmanPodMemberCp: a Podman pod member's pid (its relay, ADR 024)
// shows the member's rootfs, not the infra's nor the host's.
func TestPodmanPodMemberCp(t *testing.T) {
	p := startPodman(t)
	p.mustPodman(t, "pod", "create", "--name", "cpp", "--infra-image", podmanImage, "--infra-command", "/bin/pause")
	p.mustPodman(t, "run", "-d", "--pod", "cpp", "--name", "member", podmanImage,
		"sh", "-c", "echo member > /whoami && echo ready && exec sleep 600")
	waitLogs(t, p, "member", "ready", 60*time.Second)
	name := fmt.Sprintf("msb-cpm-%d", os.Getpid())
	in := filepath.Join(t.TempDir(), "in")
	if err := os.WriteFile(in, []byte("to-member\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(filepath.Join("/", name)) })
	p.mustPodman(t, "cp", in, "member:/"+name)
	if _, err := os.Stat(filepath.Join("/", name)); err == nil {
		t.Fatalf("podman cp into a pod member wrote the host's /%s", name)
	}
	if out, errOut, code := p.podman(t, "exec", "member", "cat", "/"+name, "/whoami"); code != 0 || out != "to-member\nmember\n" {
		t.Errorf("in the member: exit %d, %q, %q", code, out, errOut)
	}
	p.mustPodman(t, "pod", "rm", "-f", "cpp")
}
