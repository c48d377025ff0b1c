package main

import (
	"strings"
	"testing"
)

func TestEventReport(t *testing.T) {
	ev := &events{seen: map[string][]string{
		"ok":    wantEvents,
		"miss":  wantEvents[:6],
		"dup":   append(append([]string{}, wantEvents...), "/tasks/exit init"),
		"odd":   append(append([]string{}, wantEvents...), "/tasks/oom"),
		"order": {"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit exec", "/tasks/delete", "/tasks/exit init"},
	}}
	for _, id := range []string{"ok", "miss", "dup", "odd", "order", "none"} {
		ev.expect(id)
	}
	r := ev.report()
	if r.checked != 6 || len(r.missing) != 2 || len(r.dups) != 1 || len(r.extra) != 1 || len(r.order) != 1 || r.clean() {
		t.Fatalf("%+v", r)
	}
	if !strings.HasPrefix(r.missing[0], "miss: /tasks/delete") || !strings.HasPrefix(r.missing[1], "none: /tasks/create") {
		t.Fatalf("missing %q", r.missing)
	}
	ev = &events{seen: map[string][]string{"order": ev.seen["order"]}, expected: []string{"order"}}
	if !ev.report().clean() {
		t.Fatal("out of order alone must not fail")
	}
}

func TestLeaks(t *testing.T) {
	base := inventory{mounts: []string{"/m"}, fds: map[string]int{"socket": 10, "pipe": 4}}
	if l := (inventory{mounts: []string{"/m"}, fds: map[string]int{"socket": 9, "pipe": 5}}).leaks(base); len(l) != 0 {
		t.Fatalf("same total, same mounts: %q", l)
	}
	now := inventory{procs: []string{"qemu 1: qemu"}, mounts: []string{"/m", "/n"}, stateDirs: []string{"/s/ns/a"},
		fds: map[string]int{"socket": 12, "pipe": 4}}
	got := strings.Join(now.leaks(base), "\n")
	for _, w := range []string{"processes: 1", "mounts: 1\n  /n", "state dirs: 1", "containerd fds: 16, baseline 14 (grew: socket +2)"} {
		if !strings.Contains(got, w) {
			t.Errorf("no %q in\n%s", w, got)
		}
	}
}
