package main

import (
	"strings"
	"testing"
)

// An excerpt of a running msb qemu's /proc/PID/smaps (-m 256, tb-size=64),
// the mappings bench/density's split must tell apart.
const qemuSmaps = `55cd3f91a000-55cd3feb1000 r-xp 00407000 fe:00 10166288                   /usr/bin/qemu-system-x86_64
Size:               5724 kB
Rss:                5724 kB
Pss:                5464 kB
55cd5d352000-55cd5df8b000 rw-p 00000000 00:00 0                          [heap]
Size:              12516 kB
Pss:                6164 kB
7f47bc000000-7f47bcbbb000 rw-p 00000000 00:00 0 
Size:              12012 kB
Pss:               10360 kB
7f47c2600000-7f47c3dad000 rw-p 00000000 fe:00 745494                     /var/lib/msb/vmlinux
Size:              24244 kB
Pss:               17408 kB
7f47c3e00000-7f47d3e00000 rw-p 00000000 00:00 0 
Size:             262144 kB
Pss:               81920 kB
7f47d4000000-7f47d7fff000 rwxp 00000000 00:00 0 
Size:              65532 kB
Pss:               65532 kB
7f47a8021000-7f47ac000000 ---p 00000000 00:00 0 
Size:              65404 kB
Pss:                   0 kB
`

func TestSplitSmaps(t *testing.T) {
	got := splitSmaps(strings.NewReader(qemuSmaps), 256*1024)
	want := map[string]int64{partRAM: 81920, partTCG: 65532, partFile: 5464 + 17408, partAnon: 6164 + 10360}
	for part, w := range want {
		if got[part] != w {
			t.Errorf("%s: %d KiB, want %d (all: %v)", part, got[part], w, got)
		}
	}
	// Without -m's size nothing is guest RAM: it stays anonymous memory.
	if got := splitSmaps(strings.NewReader(qemuSmaps), -1); got[partRAM] != 0 || got[partAnon] != 6164+10360+81920 {
		t.Errorf("without the RAM size: %v", got)
	}
}

// TestMeminfo reads fields of this machine's /proc/meminfo.
func TestMeminfo(t *testing.T) {
	if total, avail := meminfo("MemTotal"), memAvailableKiB(); total <= 0 || avail <= 0 || avail > total {
		t.Fatalf("MemTotal %d kB, MemAvailable %d kB", total, avail)
	}
	if meminfo("NoSuchField") != 0 {
		t.Fatal("a missing field reads non-zero")
	}
}
