package specconv

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCheckUpdate(t *testing.T) {
	i64 := func(n int64) *int64 { return &n }
	u64 := func(n uint64) *uint64 { return &n }
	mem := func(n int64) *specs.LinuxResources {
		return &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(n)}}
	}
	cpu := func(q int64, p uint64) *specs.LinuxResources {
		return &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(q), Period: u64(p)}}
	}
	vm := VMSize{VCPUs: 2, MemoryMiB: 240, OverheadMiB: 128} // 112 MiB for the container
	cases := []struct {
		name string
		size VMSize
		r    *specs.LinuxResources
		want []string // nil: accepted
	}{
		{"nil", vm, nil, nil},
		{"memory within", vm, mem(112 << 20), nil},
		{"memory lowered", vm, mem(16 << 20), nil},
		{"memory unlimited", vm, mem(-1), nil},
		{"memory past", vm, mem(2 << 30), []string{"linux.resources.memory.limit 2147483648", "112 MiB", "240 MiB", "128 of them", "cannot grow a running VM", "recreate"}},
		{"memory one byte past", vm, mem(112<<20 + 1), []string{"linux.resources.memory.limit 117440513"}},
		{"VM under overhead", VMSize{VCPUs: 1, MemoryMiB: 64, OverheadMiB: 128}, mem(64 << 20), nil},
		{"size unknown", VMSize{}, mem(1 << 40), nil},
		{"cpu within", vm, cpu(200000, 100000), nil},
		{"cpu unlimited", vm, cpu(-1, 100000), nil},
		{"cpu past", vm, cpu(250000, 100000), []string{"linux.resources.cpu.quota 250000 per period 100000", "3 CPUs", "VM's 2 vCPUs", "cannot grow"}},
		{"cpu quota no period", vm, &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(300000)}}, []string{"per period 100000", "3 CPUs"}},
		{"cpuset within", vm, &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-1"}}, nil},
		{"cpuset past", vm, &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0,2-3"}}, []string{`linux.resources.cpu.cpus "0,2-3" names CPU 3`, "2 vCPUs (0-1)"}},
		{"cpuset bad", vm, &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-x"}}, []string{`linux.resources.cpu.cpus "0-x"`, "0-1,3"}},
		{"cpuset reversed", vm, &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "3-1"}}, []string{"not a CPU range"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.size.CheckUpdate(tc.r)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// A resize moves the VM's memory by the change of the container's limit,
// within its headroom; past it, it is refused naming the headroom.
func TestMemoryFor(t *testing.T) {
	mem := func(n int64) *specs.LinuxResources {
		return &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &n}}
	}
	one := VMSize{VCPUs: 1, MemoryMiB: 240, OverheadMiB: 128, MaxMemoryMiB: 480} // one container of 112 MiB
	pod := VMSize{VCPUs: 1, MemoryMiB: 328, OverheadMiB: 128, MaxMemoryMiB: 656} // two of 100 MiB
	cases := []struct {
		name   string
		size   VMSize
		r      *specs.LinuxResources
		old    int64
		want   int
		refuse []string
	}{
		{"no memory", one, &specs.LinuxResources{}, 112 << 20, 240, nil},
		{"unlimited", one, mem(-1), 112 << 20, 240, nil},
		{"same", one, mem(112 << 20), 112 << 20, 240, nil},
		{"grow", one, mem(300 << 20), 112 << 20, 428, nil},
		{"grow to the ceiling", one, mem(352 << 20), 112 << 20, 480, nil},
		{"shrink", one, mem(50 << 20), 112 << 20, 178, nil},
		{"shrink to the floor", one, mem(1 << 20), 112 << 20, 129, nil},
		{"no limit before", one, mem(200 << 20), 0, 328, nil},
		{"pod member grows by its change", pod, mem(300 << 20), 100 << 20, 528, nil},
		{"pod member shrinks by its change", pod, mem(50 << 20), 100 << 20, 278, nil},
		{"size unknown", VMSize{}, mem(1 << 40), 0, 0, nil},
		{"past the headroom", one, mem(2 << 30), 112 << 20, 0, []string{"linux.resources.memory.limit 2147483648", "2176 MiB", "480 MiB this VM can grow to", "resize_memory_factor", "max_memory_mib", "at most 352 MiB"}},
		{"one MiB past", one, mem(353 << 20), 112 << 20, 0, []string{"481 MiB", "at most 352 MiB"}},
		{"no headroom", VMSize{VCPUs: 1, MemoryMiB: 240, OverheadMiB: 128}, mem(113 << 20), 112 << 20, 0, []string{"240 MiB this VM can grow to", "at most 112 MiB"}},
		{"pod past", pod, mem(500 << 20), 100 << 20, 0, []string{"728 MiB", "at most 428 MiB"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.size.MemoryFor(tc.r, tc.old)
			if tc.refuse == nil {
				if err != nil || got != tc.want {
					t.Fatalf("got %d MiB, %v; want %d", got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %d MiB", got)
			}
			for _, w := range tc.refuse {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
