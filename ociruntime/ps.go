package ociruntime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	task "github.com/containerd/containerd/api/runtime/task/v3"
	runc "github.com/containerd/go-runc"
	"google.golang.org/protobuf/proto"

	"github.com/msb-dev/msb/vmm"
)

// Pids are the host pids `ps` reports: the VMM process, the one host
// process that stands for the container (the guest's own pids would point
// a caller at unrelated host processes).
func Pids(ctx context.Context, o Options, id string) ([]int, error) {
	c, err := load(o, id)
	if err != nil {
		return nil, err
	}
	if !c.vmmAlive() {
		return []int{}, nil
	}
	return []int{c.rec.Pid}, nil
}

// PsTable is `ps --format table`: the host's ps output (psArgs, default
// -ef) limited to pids, as runc prints it.
func PsTable(w io.Writer, pids []int, psArgs []string) error {
	if len(psArgs) == 0 {
		psArgs = []string{"-ef"}
	}
	out, err := exec.Command("ps", psArgs...).Output()
	if err != nil {
		return fmt.Errorf("ps %s: %w", strings.Join(psArgs, " "), err)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	col := slices.Index(strings.Fields(lines[0]), "PID")
	if col < 0 {
		return fmt.Errorf("ps %s: no PID column", strings.Join(psArgs, " "))
	}
	fmt.Fprintln(w, lines[0])
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) <= col {
			continue
		}
		if pid, err := strconv.Atoi(f[col]); err == nil && slices.Contains(pids, pid) {
			fmt.Fprintln(w, l)
		}
	}
	return nil
}

// List is `list`: every container under o.Root.
func List(ctx context.Context, o Options) ([]ociState, error) {
	dirs, err := filepath.Glob(filepath.Join(vmm.StateDirPath(o.Root, "*"), recordFile))
	if err != nil {
		return nil, err
	}
	out := []ociState{}
	for _, d := range dirs {
		c, err := load(o, filepath.Base(filepath.Dir(d)))
		if err != nil {
			continue // one being created or deleted
		}
		out = append(out, c.state(ctx))
	}
	return out, nil
}

// PrintList writes List's result as runc list does.
func PrintList(w io.Writer, states []ociState, format string, quiet bool) error {
	switch {
	case quiet:
		for _, s := range states {
			fmt.Fprintln(w, s.ID)
		}
	case format == "json":
		return json.NewEncoder(w).Encode(states)
	case format == "table" || format == "":
		tw := tabwriter.NewWriter(w, 12, 1, 3, ' ', 0)
		fmt.Fprint(tw, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
		for _, s := range states {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", s.ID, s.Pid, s.Status, s.Bundle, s.Created.Format(time.RFC3339Nano), s.Owner)
		}
		return tw.Flush()
	default:
		return fmt.Errorf("--format %q: use table or json", format)
	}
	return nil
}

// Events is `events`: the container's stats from the guest as runc's
// stats events, once (stats) or every interval until the container stops.
func Events(ctx context.Context, o Options, id string, once bool, interval time.Duration, w io.Writer) error {
	c, err := load(o, id)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	for {
		st, err := guestStats(ctx, c)
		if err != nil {
			if !once && !c.vmmAlive() {
				return nil
			}
			return err
		}
		if err := enc.Encode(runc.Event{Type: "stats", ID: id, Stats: st}); err != nil {
			return err
		}
		if once {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func guestStats(ctx context.Context, c *container) (*runc.Stats, error) {
	a, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	resp, err := a.task.Stats(ctx, &task.StatsRequest{ID: c.rec.ID})
	if err != nil {
		return nil, fmt.Errorf("stats of %q in the guest: %w", c.rec.ID, err)
	}
	var m v2.Metrics
	if resp.Stats == nil || !bytes.HasSuffix([]byte(resp.Stats.TypeUrl), []byte(string(proto.MessageName(&m)))) {
		return nil, fmt.Errorf("stats of %q: unexpected type %v", c.rec.ID, resp.Stats)
	}
	if err := proto.Unmarshal(resp.Stats.Value, &m); err != nil {
		return nil, fmt.Errorf("stats of %q: %w", c.rec.ID, err)
	}
	return runcStats(&m), nil
}

// runcStats maps the guest's cgroup v2 metrics onto runc's stats shape.
func runcStats(m *v2.Metrics) *runc.Stats {
	s := &runc.Stats{}
	if cpu := m.GetCPU(); cpu != nil {
		s.Cpu.Usage = runc.CpuUsage{Total: cpu.UsageUsec * 1000, Kernel: cpu.SystemUsec * 1000, User: cpu.UserUsec * 1000}
		s.Cpu.Throttling = runc.Throttling{Periods: cpu.NrPeriods, ThrottledPeriods: cpu.NrThrottled, ThrottledTime: cpu.ThrottledUsec * 1000}
	}
	if mem := m.GetMemory(); mem != nil {
		s.Memory.Cache = mem.File
		s.Memory.Usage = runc.MemoryEntry{Usage: mem.Usage, Limit: mem.UsageLimit, Max: mem.MaxUsage}
		s.Memory.Swap = runc.MemoryEntry{Usage: mem.SwapUsage, Limit: mem.SwapLimit, Max: mem.SwapMaxUsage}
		s.Memory.Raw = map[string]uint64{"anon": mem.Anon, "file": mem.File, "kernel_stack": mem.KernelStack, "slab": mem.Slab, "sock": mem.Sock, "shmem": mem.Shmem}
	}
	if p := m.GetPids(); p != nil {
		s.Pids = runc.Pids{Current: p.Current, Limit: p.Limit}
	}
	return s
}
