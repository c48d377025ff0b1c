package e2e

// Read-write single-file binds from another filesystem than the state dir,
// as Docker and Kubernetes bind /etc/hosts & co from their data roots.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// otherFS mounts a small tmpfs for the test: a filesystem that is surely
// not the shim's state root's.
func otherFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// mountsBelow lists the mount points at or below dir.
func mountsBelow(t *testing.T, dir string) []string {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	return out
}

// A rw file bind whose source is on another filesystem (a tmpfs) than the
// state root: the guest's writes reach the host file and the host's reach
// the guest; SIGKILL of the shim leaves nothing mounted.
func TestShimRWFileBindOtherFS(t *testing.T) {
	e := startShimEnv(t)
	src := filepath.Join(otherFS(t), "hosts")
	if err := os.WriteFile(src, []byte("host1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, ctx := e.goClient(t)
	ctr := e.newContainer(t, c, "rwfile", oci.WithProcessArgs("sleep", "600"),
		oci.WithMounts([]specs.Mount{{Type: "bind", Source: src, Destination: "/etc/msb-hosts", Options: []string{"rbind", "rw"}}}))
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatalf("create with a rw file bind from another filesystem: %v", err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if m := mountsBelow(t, e.stateRoot); len(m) == 0 {
		t.Fatal("the rw file is not staged by a bind mount below the state root")
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	run := func(id, script string) string {
		t.Helper()
		var out, errb lockedBuffer
		ps := *spec.Process
		ps.Args = []string{"sh", "-c", script}
		p, err := task.Exec(ctx, id, &ps, cio.NewCreator(cio.WithStreams(nil, &out, &errb)))
		if err != nil {
			t.Fatal(err)
		}
		exitC := waitAndStart(t, ctx, p)
		st := waitExit(t, exitC, 20*time.Second, id)
		p.IO().Wait()
		if _, err := p.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if st.ExitCode() != 0 {
			t.Fatalf("%s: exit %d, stderr %q", id, st.ExitCode(), errb.String())
		}
		return out.String()
	}

	if got := run("w", "cat /etc/msb-hosts && echo guest >> /etc/msb-hosts"); got != "host1\n" {
		t.Fatalf("guest read %q, want the host's content", got)
	}
	if b, _ := os.ReadFile(src); string(b) != "host1\nguest\n" {
		t.Fatalf("host file after the guest's write: %q", b)
	}
	f, err := os.OpenFile(src, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("host2\n")
	f.Close()
	if got := run("r", "cat /etc/msb-hosts"); got != "host1\nguest\nhost2\n" {
		t.Fatalf("guest read %q after the host's write", got)
	}

	e.killShim(t, "rwfile")
	deadline := time.Now().Add(10 * time.Second)
	for m := mountsBelow(t, e.stateRoot); len(m) > 0; m = mountsBelow(t, e.stateRoot) {
		if time.Now().After(deadline) {
			t.Fatalf("left mounted after SIGKILL of the shim: %s", strings.Join(m, ", "))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if b, err := os.ReadFile(src); err != nil || string(b) != "host1\nguest\nhost2\n" {
		t.Fatalf("source after cleanup: %q, %v", b, err)
	}
}
