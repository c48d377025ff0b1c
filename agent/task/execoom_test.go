package task

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseMemoryEvents(t *testing.T) {
	ev, err := parseMemoryEvents([]byte("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"))
	if err != nil || ev != (memEvents{oom: 3, oomKill: 2}) {
		t.Errorf("got %+v, %v; want oom 3, oom_kill 2", ev, err)
	}
	if _, err := parseMemoryEvents([]byte("oom_kill x\n")); err == nil || !strings.Contains(err.Error(), "oom_kill x") {
		t.Errorf("bad count: %v, want an error naming the line", err)
	}
}

// TestExecOOMExplain: a runtime failure during which the cgroup's OOM
// counters rose says "possibly OOM-killed" with the limit, as
// ResourceExhausted (also through toStatus); otherwise it passes as is.
func TestExecOOMExplain(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("memory.events", "oom 1\noom_kill 1\n")
	write("memory.max", "67108864\n")
	w := execOOMWatch{dir: dir, before: memEvents{oom: 1, oomKill: 1}, ok: true}
	runtimeErr := errors.New("OCI runtime exec failed: crun: /init did not terminate successfully")

	if err := w.explain(runtimeErr); err != runtimeErr {
		t.Errorf("counters unchanged: %v, want the runtime's error as is", err)
	}
	for _, events := range []string{"oom 2\noom_kill 1\n", "oom 1\noom_kill 2\n"} {
		write("memory.events", events)
		err := w.explain(runtimeErr)
		for _, want := range []string{"possibly OOM-killed", "memory limit (64 MiB) is reached", "/init did not terminate successfully"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("events %q: %v; want it to say %q", events, err, want)
			}
		}
		if !errdefs.IsResourceExhausted(err) || !errors.Is(err, runtimeErr) {
			t.Errorf("events %q: %v is not ResourceExhausted wrapping the runtime's error", events, err)
		}
		if s, _ := status.FromError(ToStatus(err)); s.Code() != codes.ResourceExhausted {
			t.Errorf("events %q: status code %v, want ResourceExhausted", events, s.Code())
		}
	}
	write("memory.max", "max\n")
	if err := w.explain(runtimeErr); err == nil || !strings.Contains(err.Error(), "the VM's memory is exhausted") {
		t.Errorf("no limit: %v, want it to name the VM's memory", err)
	}
	if err := (execOOMWatch{}).explain(runtimeErr); err != runtimeErr {
		t.Errorf("unknown cgroup: %v, want the runtime's error as is", err)
	}
}

func TestByteSize(t *testing.T) {
	for n, want := range map[uint64]string{64 << 20: "64 MiB", 1 << 30: "1024 MiB", 1000: "1000 bytes", 3<<20 + 1: "3145729 bytes"} {
		if got := byteSize(n); got != want {
			t.Errorf("byteSize(%d) = %q, want %q", n, got, want)
		}
	}
}
