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
