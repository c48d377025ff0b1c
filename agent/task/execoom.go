package task

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// An exec into a container whose memory cgroup is full (a tmpfs filled to
// the limit: its pages cannot be reclaimed) dies in the OCI runtime's
// child, which reports only "/init did not terminate successfully". As
// runc does (libcontainer's setnsProcess: "possibly OOM-killed"), the
// agent compares the cgroup's OOM counters around the runtime's exec and
// names the memory limit when they rose.

// memEvents are the OOM counters of a cgroup v2 memory.events file: oom
// (times the limit was hit and reclaim failed) and oom_kill.
type memEvents struct {
	oom, oomKill uint64
}

// readMemoryEvents reads the OOM counters of the memory.events file path.
func readMemoryEvents(path string) (memEvents, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return memEvents{}, err
	}
	return parseMemoryEvents(b)
}

func parseMemoryEvents(b []byte) (memEvents, error) {
	var ev memEvents
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		var dst *uint64
		switch k {
		case "oom":
			dst = &ev.oom
		case "oom_kill":
			dst = &ev.oomKill
		}
		if !ok || dst == nil {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return memEvents{}, fmt.Errorf("memory.events %q: %w", sc.Text(), err)
		}
		*dst = n
	}
	return ev, nil
}

// execOOMWatch is the container's OOM counters before an exec; ok false
// when the cgroup is unknown or unreadable (nothing is then claimed).
type execOOMWatch struct {
	dir    string // the cgroup's directory
	before memEvents
	ok     bool
}

// watchExecOOM reads c's OOM counters before an exec starts.
func watchExecOOM(c *container) execOOMWatch {
	if c.cgroup == "" {
		return execOOMWatch{}
	}
	dir := filepath.Join(cgroupRoot, c.cgroup)
	ev, err := readMemoryEvents(filepath.Join(dir, "memory.events"))
	return execOOMWatch{dir: dir, before: ev, ok: err == nil}
}

// explain returns err, the runtime's failure to start an exec, saying the
// exec was possibly OOM-killed (ResourceExhausted) when the cgroup's OOM
// counters rose since w was taken, and naming the memory limit.
func (w execOOMWatch) explain(err error) error {
	if !w.ok {
		return err
	}
	after, rerr := readMemoryEvents(filepath.Join(w.dir, "memory.events"))
	if rerr != nil || (after.oom <= w.before.oom && after.oomKill <= w.before.oomKill) {
		return err
	}
	return fmt.Errorf("possibly OOM-killed: %s; raise the container's memory limit or free memory in it (files in a tmpfs count): %w: %w",
		memoryLimitText(w.dir), err, errdefs.ErrResourceExhausted)
}

// memoryLimitText names the cgroup's memory limit (memory.max) as the
// reason, or the VM's memory when the cgroup has none.
func memoryLimitText(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "memory.max"))
	if err != nil {
		return "the container's memory is exhausted"
	}
	limit := strings.TrimSpace(string(b))
	n, err := strconv.ParseUint(limit, 10, 64)
	if err != nil {
		return "the VM's memory is exhausted (the container has no memory limit)"
	}
	return "the container's memory limit (" + byteSize(n) + ") is reached"
}

// byteSize is n in MiB when whole, else in bytes.
func byteSize(n uint64) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
