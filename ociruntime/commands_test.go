package ociruntime

import (
	"bytes"
	"strings"
	"syscall"
	"testing"

	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
)

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"9": syscall.SIGKILL, "KILL": syscall.SIGKILL, "SIGTERM": syscall.SIGTERM, "term": syscall.SIGTERM, "hup": syscall.SIGHUP} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "NOPE", "0", "99"} {
		if _, err := parseSignal(in); err == nil {
			t.Errorf("parseSignal(%q) accepted", in)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"100": 100, "64m": 64 << 20, "1g": 1 << 30, "2K": 2048, "512mb": 512 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := parseSize("lots"); err == nil {
		t.Error("parseSize(lots) accepted")
	}
}

func TestRuncStats(t *testing.T) {
	s := runcStats(&v2.Metrics{
		CPU:    &v2.CPUStat{UsageUsec: 5, UserUsec: 3, SystemUsec: 2},
		Memory: &v2.MemoryStat{Usage: 100, UsageLimit: 200, File: 7},
		Pids:   &v2.PidsStat{Current: 3, Limit: 10},
	})
	if s.Cpu.Usage.Total != 5000 || s.Cpu.Usage.User != 3000 || s.Memory.Usage.Usage != 100 || s.Memory.Usage.Limit != 200 || s.Memory.Cache != 7 || s.Pids.Current != 3 || s.Pids.Limit != 10 {
		t.Fatalf("runcStats: %+v", s)
	}
}

func TestPrintList(t *testing.T) {
	states := []ociState{{ID: "a", Pid: 5, Status: "running", Bundle: "/b"}}
	var b bytes.Buffer
	if err := PrintList(&b, states, "table", false); err != nil || !strings.Contains(b.String(), "ID") || !strings.Contains(b.String(), "running") {
		t.Fatalf("table: %q %v", b.String(), err)
	}
	b.Reset()
	if err := PrintList(&b, states, "json", false); err != nil || !strings.Contains(b.String(), `"id":"a"`) {
		t.Fatalf("json: %q %v", b.String(), err)
	}
	b.Reset()
	if err := PrintList(&b, states, "", true); err != nil || b.String() != "a\n" {
		t.Fatalf("quiet: %q %v", b.String(), err)
	}
	if err := PrintList(&b, states, "yaml", false); err == nil {
		t.Fatal("unknown format accepted")
	}
}
