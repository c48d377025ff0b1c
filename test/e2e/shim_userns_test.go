package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestShimPodUserNamespace runs a pod with a user namespace the way CRI
// does with ctr's tools: both containers get the mapping (their snapshots
// shifted to it), the sandbox's user namespace is made by runc in the
// guest, and the app container joins it by the task pid's path. Inside,
// root owns and can write its rootfs; on the host the files it made belong
// to the mapped id.
func TestShimPodUserNamespace(t *testing.T) {
	e := startShimEnv(t)
	const sb, app = "userns-sb", "userns-app"
	const host = 100000
	idmap := []string{"--uidmap", "0:" + strconv.Itoa(host) + ":65536", "--gidmap", "0:" + strconv.Itoa(host) + ":65536"}
	ns := "/proc/" + strconv.Itoa(e.runPodSandbox(t, sb, idmap...)) + "/ns/"
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
	out := read(app, "stat -c %u:%g /bin /etc; touch /made && stat -c %u:%g /made")
	if out != "0:0\n0:0\n0:0" {
		t.Fatalf("ownership in the app container: %q", out)
	}
}
