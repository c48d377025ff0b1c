package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

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
