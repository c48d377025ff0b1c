package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestShimPodUserNamespace runs a pod with a user namespace the way CRI
// does with ctr's tools: both containers get the mapping (their snapshots
// shifted to it), the sandbox's user namespace is made by runc in the
// guest, and the app container joins it by the task pid's path. Inside,
// root owns and can write its rootfs; on the host the files it made belong
// to the mapped id. The pod VM's qemu is an unprivileged user all the same
// (ADR 022): its own user namespace keeps the pod's host ids as they are.
func TestShimPodUserNamespace(t *testing.T) {
	e := startShimEnv(t)
	const sb, app = "userns-sb", "userns-app"
	const host = 100000
	idmap := []string{"--uidmap", "0:" + strconv.Itoa(host) + ":65536", "--gidmap", "0:" + strconv.Itoa(host) + ":65536"}
	pid := e.runPodSandbox(t, sb, idmap...)
	ns := "/proc/" + strconv.Itoa(pid) + "/ns/"
	a := append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, idmap...), podAnn(sb, "container")...)
	e.MustCtr(append(a, "--with-ns", "network:"+ns+"net", "--with-ns", "user:"+ns+"user", e.image, app, "sleep", "600")...)
	t.Cleanup(func() { e.remove(t, app) })
	e.waitStatus(t, app, "RUNNING", time.Minute)

	n := 0
	read := func(id, cmd string) string {
		n++
		return strings.TrimSpace(e.MustCtr("task", "exec", "--exec-id", "u"+strconv.Itoa(n), id, "sh", "-c", cmd))
	}
	want := "0 " + strconv.Itoa(host) + " 65536"
	for _, id := range []string{sb, app} {
		if got := strings.Join(strings.Fields(read(id, "cat /proc/self/uid_map")), " "); got != want {
			t.Fatalf("%s: uid_map %q, want %q", id, got, want)
		}
	}
	if a, b := read(sb, "readlink /proc/self/ns/user"), read(app, "readlink /proc/self/ns/user"); a == "" || a != b {
		t.Fatalf("user namespaces: sandbox %q, app %q", a, b)
	}
	out := read(app, "stat -c %u:%g /bin /etc; touch /made && stat -c %u:%g /made; touch /given && chown 1000:1001 /given && stat -c %u:%g /given")
	if out != "0:0\n0:0\n0:0\n1000:1001" {
		t.Fatalf("ownership in the app container: %q", out)
	}
	if out := read(sb, "touch /sb-made && chown 7:8 /sb-made && stat -c %u:%g /bin /sb-made"); out != "0:0\n7:8" {
		t.Fatalf("ownership in the sandbox: %q", out)
	}
	if os.Getenv("MSB_TEST_NO_JAIL") == "1" {
		return
	}
	qemu := childNamed(t, pid, "qemu")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", qemu))
	if err != nil {
		t.Fatal(err)
	}
	checkQEMUUnprivileged(t, qemu, string(status))
	// Its namespace keeps the pod's host ids, and nothing of host root's.
	for _, m := range []string{"uid_map", "gid_map"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", qemu, m))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 2 || strings.Join(strings.Fields(lines[1]), " ") != fmt.Sprintf("%d %d 65536", host, host) {
			t.Errorf("qemu's %s: %q, want its own range and %d-%d kept", m, b, host, host+65535)
		}
	}
	// On the host, the snapshots hold the mapped ids.
	owners := map[string][2]uint32{"made": {host, host}, "given": {host + 1000, host + 1001}, "sb-made": {host + 7, host + 8}}
	_ = filepath.WalkDir(e.Dir, func(p string, d fs.DirEntry, err error) error {
		var st syscall.Stat_t
		if w, ok := owners[d.Name()]; ok && err == nil && strings.Contains(p, "snapshots") && syscall.Lstat(p, &st) == nil && st.Uid == w[0] && st.Gid == w[1] {
			delete(owners, d.Name())
		}
		return nil
	})
	if len(owners) != 0 {
		t.Errorf("files not found in the snapshots with these host owners: %v", owners)
	}
}
