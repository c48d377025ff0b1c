package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// TestJailedQEMUPropagatedBind: a container's own VM (not a pod member)
// with an "rslave" bind runs qemu unprivileged (ADR 022), and the host's
// mounts below the bind's source reach the container with their owners
// and modes: one there before the start and one made while it runs, each
// a tmpfs holding a root-owned 0700 directory and 0600 file, which qemu's
// namespace reads only through an id-mapped mount (the VMM mirrors them,
// mounts.MirrorBound). The host's unmount takes the late one away.
func TestJailedQEMUPropagatedBind(t *testing.T) {
	requireJail(t)
	root := stateRoot(t)
	src := t.TempDir()
	tmpfs := func(name, secret string) {
		t.Helper()
		p := filepath.Join(src, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", p, "tmpfs", 0, "mode=0755,size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Unmount(p, unix.MNT_DETACH) })
		if err := os.Mkdir(filepath.Join(p, "d"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "d", "f"), []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmpfs("early", "early-secret")
	if err := os.Mkdir(filepath.Join(src, "late"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := `cat /prop/early/d/f; echo ready
i=0; until cat /prop/late/d/f 2>/dev/null; do i=$((i+1)); [ $i -gt 300 ] && echo late-missing && break; sleep 0.2; done
i=0; while [ -e /prop/late/d ]; do i=$((i+1)); [ $i -gt 300 ] && echo late-stays && break; sleep 0.2; done; echo gone
exec sleep 1000`
	b := bundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/prop", Type: "bind", Source: src, Options: []string{"rbind", "rslave", "rw"}})
	})
	cmd := runtimeCmd(root, "run", "--bundle", b, "propagated")
	out := startOut(t, cmd)
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case l := <-lines:
			if l != want {
				t.Fatalf("container said %q, want %q", l, want)
			}
		case <-time.After(3 * time.Minute):
			t.Fatalf("container did not say %q within 3 minutes", want)
		}
	}
	expect("early-secret")
	expect("ready")
	qemu := childNamed(t, childNamed(t, cmd.Process.Pid, "msb-runtime"), "qemu")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", qemu))
	if err != nil {
		t.Fatal(err)
	}
	checkQEMUUnprivileged(t, qemu, string(status))
	tmpfs("late", "late-secret")
	expect("late-secret")
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", qemu))
	if err != nil {
		t.Fatal(err)
	}
	late := filepath.Join(src, "late")
	found := false
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 5 && f[4] == late {
			found = true
			if !strings.Contains(f[5], "idmapped") {
				t.Errorf("the late mount in qemu's jail is not id-mapped: %s", l)
			}
		}
	}
	if !found {
		t.Errorf("the late mount %s is not in qemu's jail", late)
	}
	if err := unix.Unmount(late, 0); err != nil {
		t.Fatal(err)
	}
	expect("gone")
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	assertNothingLeft(t, root)
}
