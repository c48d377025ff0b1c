// Package cgstats puts a guest's cgroup metrics in the type the host's
// cgroup mode calls for. The guest runs cgroup v2 and the agent answers
// with io.containerd.cgroups.v2.Metrics; containerd and its clients expect
// the type of the host's cgroup mode (containerd's runc shim answers v1
// metrics on a cgroup v1 or hybrid host), so on such a host the guest's v2
// metrics are converted to v1 ones.
package cgstats

import (
	"fmt"
	"math"
	"strings"
	"sync"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// hostUnified reports whether the host runs cgroup v2 only, as
// containerd's cgroups.Mode() == Unified decides it.
var hostUnified = sync.OnceValue(func() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
})

var (
	v1MetricsName = string(proto.MessageName(&v1.Metrics{}))
	v2MetricsName = string(proto.MessageName(&v2.Metrics{}))
)

// typeName is a type URL's message name ("type.googleapis.com/x.y" → "x.y").
func typeName(url string) string {
	return url[strings.LastIndexByte(url, '/')+1:]
}

// ForHost returns the agent's metrics a in the type for this host's cgroup
// mode.
func ForHost(a *anypb.Any) (*anypb.Any, error) {
	return hostStats(a, hostUnified())
}

// hostStats returns the agent's metrics in the type for the host's cgroup
// mode (unified: v2 as they are; else converted to v1).
func hostStats(a *anypb.Any, unified bool) (*anypb.Any, error) {
	if a == nil || unified || typeName(a.TypeUrl) != v2MetricsName {
		return a, nil
	}
	var m v2.Metrics
	if err := proto.Unmarshal(a.Value, &m); err != nil {
		return nil, fmt.Errorf("guest metrics: %w", err)
	}
	b, err := proto.Marshal(v1FromV2(&m))
	if err != nil {
		return nil, err
	}
	return &anypb.Any{TypeUrl: v1MetricsName, Value: b}, nil
}

// v1Limit maps cgroup v2's "max" (read as MaxUint64) to cgroup v1's way of
// saying no pids limit (0).
func v1Limit(v uint64) uint64 {
	if v == math.MaxUint64 {
		return 0
	}
	return v
}

func satAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// v1FromV2 converts cgroup v2 metrics to the v1 fields that mean the same:
// memory usage/limit and the memory.stat counters, CPU usage (µs → ns)
// and throttling, pids, block I/O per device, hugetlb, OOM kills. v2
// metrics are hierarchical, so v1's total_* fields get the same values.
// Every message containerd's clients dereference is set, empty when the
// guest reports nothing for it (runc's shim always fills them; nerdctl
// stats and dockerd read Blkio, CPU.Usage, Memory.Usage... unchecked).
func v1FromV2(m *v2.Metrics) *v1.Metrics {
	out := v1FromV2Fields(m)
	if out.Pids == nil {
		out.Pids = &v1.PidsStat{}
	}
	if out.CPU == nil {
		out.CPU = &v1.CPUStat{}
	}
	if out.CPU.Usage == nil {
		out.CPU.Usage = &v1.CPUUsage{}
	}
	if out.CPU.Throttling == nil {
		out.CPU.Throttling = &v1.Throttle{}
	}
	if out.Memory == nil {
		out.Memory = &v1.MemoryStat{}
	}
	for _, e := range []**v1.MemoryEntry{&out.Memory.Usage, &out.Memory.Swap, &out.Memory.Kernel, &out.Memory.KernelTCP} {
		if *e == nil {
			*e = &v1.MemoryEntry{}
		}
	}
	if out.MemoryOomControl == nil {
		out.MemoryOomControl = &v1.MemoryOomControl{}
	}
	if out.Blkio == nil {
		out.Blkio = &v1.BlkIOStat{}
	}
	if out.Rdma == nil {
		out.Rdma = &v1.RdmaStat{}
	}
	return out
}

func v1FromV2Fields(m *v2.Metrics) *v1.Metrics {
	out := &v1.Metrics{}
	if p := m.Pids; p != nil {
		out.Pids = &v1.PidsStat{Current: p.Current, Limit: v1Limit(p.Limit)}
	}
	if c := m.CPU; c != nil {
		out.CPU = &v1.CPUStat{
			Usage: &v1.CPUUsage{Total: c.UsageUsec * 1000, User: c.UserUsec * 1000, Kernel: c.SystemUsec * 1000},
			Throttling: &v1.Throttle{
				Periods: c.NrPeriods, ThrottledPeriods: c.NrThrottled, ThrottledTime: c.ThrottledUsec * 1000,
			},
		}
	}
	if s := m.Memory; s != nil {
		out.Memory = &v1.MemoryStat{
			Cache: s.File, RSS: s.Anon, RSSHuge: s.AnonThp, MappedFile: s.FileMapped,
			Dirty: s.FileDirty, Writeback: s.FileWriteback,
			PgFault: s.Pgfault, PgMajFault: s.Pgmajfault,
			InactiveAnon: s.InactiveAnon, ActiveAnon: s.ActiveAnon,
			InactiveFile: s.InactiveFile, ActiveFile: s.ActiveFile, Unevictable: s.Unevictable,
			HierarchicalMemoryLimit: s.UsageLimit, HierarchicalSwapLimit: s.SwapLimit,
			TotalCache: s.File, TotalRSS: s.Anon, TotalRSSHuge: s.AnonThp, TotalMappedFile: s.FileMapped,
			TotalDirty: s.FileDirty, TotalWriteback: s.FileWriteback,
			TotalPgFault: s.Pgfault, TotalPgMajFault: s.Pgmajfault,
			TotalInactiveAnon: s.InactiveAnon, TotalActiveAnon: s.ActiveAnon,
			TotalInactiveFile: s.InactiveFile, TotalActiveFile: s.ActiveFile, TotalUnevictable: s.Unevictable,
			Usage: &v1.MemoryEntry{Usage: s.Usage, Limit: s.UsageLimit, Max: s.MaxUsage},
			// v1's swap entry is memory+swap (memory.memsw.*).
			Swap:   &v1.MemoryEntry{Usage: satAdd(s.Usage, s.SwapUsage), Limit: satAdd(s.UsageLimit, s.SwapLimit)},
			Kernel: &v1.MemoryEntry{Usage: s.KernelStack + s.Slab},
		}
		if e := m.MemoryEvents; e != nil {
			out.Memory.Usage.Failcnt = e.Max
		}
	}
	if e := m.MemoryEvents; e != nil {
		out.MemoryOomControl = &v1.MemoryOomControl{OomKill: e.OomKill}
	}
	if io := m.Io; io != nil && len(io.Usage) > 0 {
		b := &v1.BlkIOStat{}
		for _, u := range io.Usage {
			b.IoServiceBytesRecursive = append(b.IoServiceBytesRecursive,
				&v1.BlkIOEntry{Op: "Read", Major: u.Major, Minor: u.Minor, Value: u.Rbytes},
				&v1.BlkIOEntry{Op: "Write", Major: u.Major, Minor: u.Minor, Value: u.Wbytes})
			b.IoServicedRecursive = append(b.IoServicedRecursive,
				&v1.BlkIOEntry{Op: "Read", Major: u.Major, Minor: u.Minor, Value: u.Rios},
				&v1.BlkIOEntry{Op: "Write", Major: u.Major, Minor: u.Minor, Value: u.Wios})
		}
		out.Blkio = b
	}
	for _, h := range m.Hugetlb {
		out.Hugetlb = append(out.Hugetlb, &v1.HugetlbStat{Usage: h.Current, Pagesize: h.Pagesize})
	}
	for _, n := range m.Network {
		out.Network = append(out.Network, &v1.NetworkStat{
			Name: n.Name, RxBytes: n.RxBytes, RxPackets: n.RxPackets, RxErrors: n.RxErrors, RxDropped: n.RxDropped,
			TxBytes: n.TxBytes, TxPackets: n.TxPackets, TxErrors: n.TxErrors, TxDropped: n.TxDropped,
		})
	}
	return out
}
