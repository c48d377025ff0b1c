package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/typeurl/v2"

	"github.com/msb-dev/msb/bench/internal/benchenv"
	"github.com/msb-dev/msb/network"
)

// wantEvents are the task events each cycle's container must publish,
// each exactly once; "init" and "exec" tell the two processes apart.
var wantEvents = []string{"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit exec", "/tasks/exit init", "/tasks/delete"}

// events records containerd's /tasks/ events per container.
type events struct {
	mu       sync.Mutex
	seen     map[string][]string // container → events in arrival order
	expected []string            // containers whose cycle passed
	errs     []string
	cancel   func()
	done     chan struct{}
}

// watchEvents subscribes to /tasks/ events until stop.
func watchEvents(ctx context.Context, c *client.Client) *events {
	ctx, cancel := context.WithCancel(ctx)
	ev := &events{seen: map[string][]string{}, cancel: cancel, done: make(chan struct{})}
	ch, errs := c.Subscribe(ctx, `topic~="/tasks/"`)
	go func() {
		defer close(ev.done)
		for {
			select {
			case env := <-ch:
				ev.add(env.Topic, env.Event)
			case err := <-errs:
				if err != nil && ctx.Err() == nil {
					ev.mu.Lock()
					ev.errs = append(ev.errs, "event stream: "+err.Error())
					ev.mu.Unlock()
				}
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond) // the subscription reaches containerd
	return ev
}

func (ev *events) add(topic string, any typeurl.Any) {
	v, err := typeurl.UnmarshalAny(any)
	if err != nil {
		return
	}
	c, ok := v.(interface{ GetContainerID() string })
	if !ok {
		return
	}
	id, key := c.GetContainerID(), topic
	if e, ok := v.(*eventstypes.TaskExit); ok {
		switch e.ID {
		case e.ContainerID:
			key += " init"
		case execID:
			key += " exec"
		default:
			key += " " + e.ID
		}
	}
	ev.mu.Lock()
	ev.seen[id] = append(ev.seen[id], key)
	ev.mu.Unlock()
}

// expect marks container id's events as due (its cycle passed).
func (ev *events) expect(id string) {
	ev.mu.Lock()
	ev.expected = append(ev.expected, id)
	ev.mu.Unlock()
}

func (ev *events) stop() {
	ev.cancel()
	<-ev.done
}

// eventReport counts the containers whose events are incomplete,
// repeated or out of order, with a few examples of each.
type eventReport struct {
	checked                     int
	missing, dups, extra, order []string
	errs                        []string
}

// clean: nothing missing, repeated or unexpected. The order is reported
// but not held against a runtime: runc's shim answers Wait before it
// publishes the init's exit, so a quick client sees /tasks/delete first.
func (r eventReport) clean() bool {
	return len(r.missing)+len(r.dups)+len(r.extra)+len(r.errs) == 0
}

func (ev *events) report() eventReport {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	r := eventReport{checked: len(ev.expected), errs: slices.Clone(ev.errs)}
	for _, id := range ev.expected {
		got := ev.seen[id]
		count := map[string]int{}
		for _, k := range got {
			count[k]++
		}
		var miss, dup, extra []string
		for _, w := range wantEvents {
			if count[w] == 0 {
				miss = append(miss, w)
			} else if count[w] > 1 {
				dup = append(dup, fmt.Sprintf("%s x%d", w, count[w]))
			}
		}
		for _, k := range sortedKeys(count) {
			if !slices.Contains(wantEvents, k) {
				extra = append(extra, k)
			}
		}
		line := func(what []string) string {
			return fmt.Sprintf("%s: %s (seen: %s)", id, strings.Join(what, ", "), strings.Join(got, " "))
		}
		if len(miss) > 0 {
			r.missing = append(r.missing, line(miss))
		}
		if len(dup) > 0 {
			r.dups = append(r.dups, line(dup))
		}
		if len(extra) > 0 {
			r.extra = append(r.extra, line(extra))
		}
		// create first, delete last; the exec's events in their order
		if len(miss)+len(dup)+len(extra) == 0 && (got[0] != "/tasks/create" || got[len(got)-1] != "/tasks/delete" ||
			slices.Index(got, "/tasks/exec-added") > slices.Index(got, "/tasks/exec-started") ||
			slices.Index(got, "/tasks/exec-started") > slices.Index(got, "/tasks/exit exec")) {
			r.order = append(r.order, line([]string{"out of order"}))
		}
	}
	return r
}

func (r eventReport) print() {
	fmt.Printf("task events (%d containers of cycles that passed, warm-up included; each must publish %s, once each)\n", r.checked, strings.Join(wantEvents, ", "))
	for _, c := range []struct {
		what  string
		which []string
	}{{"missing any", r.missing}, {"with duplicates", r.dups}, {"with unexpected events", r.extra}, {"out of order (not a failure)", r.order}} {
		fmt.Printf("  containers %-30s %d\n", c.what, len(c.which))
		for i, l := range c.which {
			if i == 3 {
				fmt.Printf("    ... %d more\n", len(c.which)-3)
				break
			}
			fmt.Println("    " + l)
		}
	}
	for _, e := range r.errs {
		fmt.Println("  " + e)
	}
}

// inventory is what exists of this containerd at one moment.
type inventory struct {
	procs      []string // role pid: cmdline
	mounts     []string
	stateDirs  []string // the shim's (msb) or runc's per-container state, containerd's bundles
	fifos      []string // the client's fifo dirs
	taps       []string // msbtap* links in the host's namespace (read only)
	fds        map[string]int
	containers []string
	tasks      []string
	snapshots  []string // active ones
}

func (s *soaker) inventory(ctx context.Context) inventory {
	e := s.e
	inv := inventory{mounts: e.Mounts(), fds: fdKinds(e.Pid())}
	for _, p := range e.Ours() {
		inv.procs = append(inv.procs, fmt.Sprintf("%s %d: %.200s", role(p), p.Pid, strings.Join(p.Args, " ")))
	}
	for _, pat := range []string{
		filepath.Join(e.StateRoot, "*", "vms", "*"), // msb: <root>/<namespace>/vms/<id>
		filepath.Join(e.Dir, "state", "io.containerd.runtime.v2.task", "*", "*"),
		filepath.Join("/run/containerd/runc", e.NS, "*"),
	} {
		m, _ := filepath.Glob(pat)
		inv.stateDirs = append(inv.stateDirs, m...)
	}
	inv.fifos, _ = filepath.Glob(filepath.Join(s.fifos, "*"))
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if strings.HasPrefix(i.Name, network.TapPrefix) {
				inv.taps = append(inv.taps, i.Name)
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if cs, err := s.c.Containers(ctx); err == nil {
		for _, c := range cs {
			inv.containers = append(inv.containers, c.ID())
		}
	}
	if ts, err := s.c.TaskService().List(ctx, nil); err == nil {
		for _, t := range ts.Tasks {
			inv.tasks = append(inv.tasks, t.ID)
		}
	}
	_ = s.c.SnapshotService("").Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Kind == snapshots.KindActive {
			inv.snapshots = append(inv.snapshots, i.Name)
		}
		return nil
	})
	return inv
}

// role names what one of our processes is.
func role(p benchenv.Proc) string {
	b := filepath.Base(p.Args[0])
	switch {
	case strings.HasPrefix(b, "qemu-system"):
		return "qemu"
	case b == "msb-runtime" && len(p.Args) > 1 && p.Args[1] == "vmm":
		return "VMM (msb-runtime vmm)"
	case strings.HasPrefix(b, "containerd-shim-"):
		return "shim"
	}
	return b
}

// fdKinds counts a process's open fds by kind: socket, pipe, anon_inode:X,
// or the directory of a file.
func fdKinds(pid int) map[string]int {
	out := map[string]int{}
	if pid == 0 {
		return out
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, d := range ents {
		t, err := os.Readlink(filepath.Join(dir, d.Name()))
		if err != nil {
			continue
		}
		k, _, _ := strings.Cut(t, "[")
		if strings.HasPrefix(t, "/") {
			k = filepath.Dir(t)
		}
		out[strings.TrimSuffix(k, ":")]++
	}
	return out
}

// leaks compares inv with the baseline: anything new is a leak, and so
// is a containerd holding more fds.
func (inv inventory) leaks(base inventory) []string {
	var out []string
	add := func(what string, now, before []string) {
		var n []string
		for _, x := range now {
			if !slices.Contains(before, x) {
				n = append(n, x)
			}
		}
		if len(n) == 0 {
			return
		}
		out = append(out, fmt.Sprintf("%s: %d", what, len(n)))
		for i, x := range n {
			if i == 5 {
				out = append(out, fmt.Sprintf("  ... %d more", len(n)-5))
				break
			}
			out = append(out, "  "+x)
		}
	}
	add("processes", inv.procs, nil)
	add("mounts", inv.mounts, base.mounts)
	add("state dirs", inv.stateDirs, base.stateDirs)
	add("client fifo dirs", inv.fifos, base.fifos)
	add(network.TapPrefix+"* links in the host namespace", inv.taps, base.taps)
	add("containers", inv.containers, base.containers)
	add("tasks", inv.tasks, base.tasks)
	add("active snapshots", inv.snapshots, base.snapshots)
	var grew []string
	for _, k := range sortedKeys(inv.fds) {
		if d := inv.fds[k] - base.fds[k]; d > 0 {
			grew = append(grew, fmt.Sprintf("%s %+d", k, d))
		}
	}
	if total, btotal := sum(inv.fds), sum(base.fds); total > btotal {
		out = append(out, fmt.Sprintf("containerd fds: %d, baseline %d (grew: %s)", total, btotal, strings.Join(grew, ", ")))
	}
	return out
}
