package cgstats

import (
	"math"
	"testing"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func v2Any(t *testing.T, m *v2.Metrics) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "io.containerd.cgroups.v2.Metrics", Value: b}
}

// On a cgroup v1 host the guest's v2 metrics become v1 metrics that
// containerd (typeurl) decodes; on a v2 host they pass unchanged.
func TestHostStats(t *testing.T) {
	m := &v2.Metrics{
		Pids:         &v2.PidsStat{Current: 3, Limit: math.MaxUint64},
		CPU:          &v2.CPUStat{UsageUsec: 1500, UserUsec: 1000, SystemUsec: 500, NrPeriods: 4, NrThrottled: 1, ThrottledUsec: 7},
		Memory:       &v2.MemoryStat{Usage: 4 << 20, UsageLimit: 32 << 20, Anon: 1 << 20, File: 2 << 20, InactiveFile: 1 << 20, SwapLimit: math.MaxUint64},
		MemoryEvents: &v2.MemoryEvents{Max: 5, OomKill: 2},
		Io:           &v2.IOStat{Usage: []*v2.IOEntry{{Major: 254, Minor: 0, Rbytes: 10, Wbytes: 20, Rios: 1, Wios: 2}}},
	}
	in := v2Any(t, m)
	if out, err := hostStats(in, true); err != nil || out != in {
		t.Fatalf("unified host: %v, %v; want the agent's metrics as they are", out, err)
	}
	out, err := hostStats(in, false)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := typeurl.UnmarshalAny(out)
	if err != nil {
		t.Fatalf("containerd cannot decode %s: %v", out.TypeUrl, err)
	}
	got, ok := dec.(*v1.Metrics)
	if !ok {
		t.Fatalf("decoded %T, want cgroup v1 metrics", dec)
	}
	if got.Pids.Current != 3 || got.Pids.Limit != 0 {
		t.Errorf("pids %v", got.Pids)
	}
	if got.CPU.Usage.Total != 1500000 || got.CPU.Usage.User != 1000000 || got.CPU.Usage.Kernel != 500000 || got.CPU.Throttling.ThrottledTime != 7000 {
		t.Errorf("cpu %v", got.CPU)
	}
	if got.Memory.Usage.Usage != 4<<20 || got.Memory.Usage.Limit != 32<<20 || got.Memory.Usage.Failcnt != 5 ||
		got.Memory.TotalRSS != 1<<20 || got.Memory.TotalCache != 2<<20 || got.Memory.TotalInactiveFile != 1<<20 ||
		got.Memory.Swap.Limit != math.MaxUint64 {
		t.Errorf("memory %v", got.Memory)
	}
	if got.MemoryOomControl.OomKill != 2 {
		t.Errorf("oom control %v", got.MemoryOomControl)
	}
	if b := got.Blkio.IoServiceBytesRecursive; len(b) != 2 || b[0].Op != "Read" || b[0].Value != 10 || b[1].Value != 20 || b[0].Major != 254 {
		t.Errorf("blkio %v", got.Blkio)
	}
	// Metrics already in v1 (or anything else) pass.
	if o, err := hostStats(out, false); err != nil || o != out {
		t.Errorf("v1 metrics not passed through: %v %v", o, err)
	}
}

// An idle guest reports no IO (and may leave out more): the v1 metrics
// still carry every message clients dereference; nerdctl stats panicked
// on a nil Blkio.
func TestHostStatsEmpty(t *testing.T) {
	for name, m := range map[string]*v2.Metrics{
		"no io":   {Pids: &v2.PidsStat{Current: 1}, CPU: &v2.CPUStat{UsageUsec: 1}, Memory: &v2.MemoryStat{Usage: 1}},
		"nothing": {},
	} {
		out, err := hostStats(v2Any(t, m), false)
		if err != nil {
			t.Fatal(err)
		}
		dec, err := typeurl.UnmarshalAny(out)
		if err != nil {
			t.Fatal(err)
		}
		got := dec.(*v1.Metrics)
		if got.Blkio == nil || got.Pids == nil || got.CPU == nil || got.CPU.Usage == nil || got.CPU.Throttling == nil ||
			got.Memory == nil || got.Memory.Usage == nil || got.Memory.Swap == nil || got.Memory.Kernel == nil ||
			got.Memory.KernelTCP == nil || got.MemoryOomControl == nil || got.Rdma == nil {
			t.Errorf("%s: nil field in %v", name, got)
		}
	}
}
