// Command soak runs N cycles of create → start → exec → kill → delete of a
// container with containerd's Go client against a private containerd, on
// msb's runtime (io.containerd.msb.v2) or, for comparison, runc's, and
// checks what a long-running node would suffer from: failed steps, task
// events missing or repeated, and what the cycles leave behind (processes,
// mounts, state dirs, taps, containerd's fds, containers, snapshots).
//
//	go run ./bench/soak [-n 1000] [-c 1] [-runtime msb|runc] [-bin DIR]   (as root)
//
// The private containerd, the busybox image and the binaries are as in
// bench/ctrrun (bench/internal/benchenv). It exits 1 on any failure, leak
// or event problem. Everything it starts or mounts is removed on exit,
// also on Ctrl-C or SIGTERM.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/msb-dev/msb/bench/internal/benchenv"
)

// steps of a cycle, in order.
var steps = []string{"create", "start", "exec", "kill", "delete"}

const (
	execID  = "e1"
	execOut = "exec-ok\n"
)

type options struct {
	n, c            int
	runtime, bin    string
	timeout, settle time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 1000, "cycles")
	flag.IntVar(&o.c, "c", 1, "concurrent workers, each cycling its own containers")
	flag.StringVar(&o.runtime, "runtime", "msb", "runtime: msb, runc or a full type (io.containerd.NAME.v2)")
	flag.StringVar(&o.bin, "bin", "", "directory with msb-runtime and containerd-shim-msb-v2 (default: build them from this repo)")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Minute, "limit of each step of a cycle")
	flag.DurationVar(&o.settle, "settle", 10*time.Second, "after the last cycle, wait up to this long for late events and for leftovers to go")
	flag.Parse()
	if !strings.Contains(o.runtime, ".") {
		o.runtime = "io.containerd." + o.runtime + ".v2"
	}
	benchenv.Main("soak", func(ctx context.Context) error { return soak(ctx, o) })
}

// result is one cycle's.
type result struct {
	id       string
	failed   string // the step that failed, "" if none
	err      error
	total    time.Duration
	stepTime map[string]time.Duration
}

func soak(ctx context.Context, o options) error {
	if o.n < 1 || o.c < 1 {
		return errors.New("-n and -c must be >= 1")
	}
	name := strings.TrimSuffix(strings.TrimPrefix(o.runtime, "io.containerd."), ".v2")
	need := []string{"containerd-shim-" + name + "-v2"}
	msb := name == "msb"
	if msb {
		need = benchenv.MsbBins
	} else if name == "runc" {
		need = append(need, "runc")
	}
	e, err := benchenv.New(ctx, "soak", o.bin, msb, need)
	defer e.Cleanup()
	if err != nil {
		return err
	}
	if cfg := os.Getenv("MSB_CONFIG"); cfg != "" && msb {
		fmt.Printf("%-24s %s\n", "MSB_CONFIG", cfg)
	}
	img, err := e.ImportBusybox(ctx)
	if err != nil {
		return err
	}
	c, err := client.New(e.Addr, client.WithDefaultNamespace(e.NS))
	if err != nil {
		return err
	}
	defer c.Close()
	image, err := c.GetImage(ctx, img)
	if err != nil {
		return err
	}
	s := &soaker{e: e, c: c, img: image, o: o, fifos: e.Dir + "/fifo"}
	evs := watchEvents(ctx, c)
	defer evs.stop()

	// One untimed cycle first: containerd's first use of the runtime and
	// snapshotter opens what it keeps open; the baseline is taken after it.
	if r := s.cycle(ctx, "soak-warm", true); r.err != nil {
		return fmt.Errorf("warm-up cycle: %s: %w", r.failed, r.err)
	}
	evs.expect("soak-warm")
	base := s.inventory(ctx)
	for t := time.Now(); len(base.procs)+len(base.stateDirs) > 0 && time.Since(t) < o.settle && ctx.Err() == nil; {
		time.Sleep(500 * time.Millisecond) // the warm-up's shim exits in the background
		base = s.inventory(ctx)
	}

	fmt.Printf("\n%d cycles of create → start → exec → kill → delete on %s, %d worker(s)\n", o.n, o.runtime, o.c)
	results := s.run(ctx, evs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	wall := s.wall
	// Parked pool VMs (pool_size in MSB_CONFIG, ADR 020) are the pool, not
	// leaks: drained first, as an operator would before counting.
	if root := filepath.Join(e.StateRoot, "pool"); e.Bin != "" {
		if _, err := os.Stat(root); err == nil {
			if out, err := exec.CommandContext(ctx, filepath.Join(e.Bin, "msb-runtime"), "pool", "drain", "--pool-root", root).CombinedOutput(); err != nil {
				return fmt.Errorf("pool drain: %v: %s", err, out)
			}
		}
	}

	// Late events and the shims' background deletes: wait for them, up to -settle.
	settleStart := time.Now()
	var probs []string
	var evRep eventReport
	var inv inventory
	for {
		evRep = evs.report()
		inv = s.inventory(ctx)
		probs = inv.leaks(base)
		if (evRep.clean() && len(probs) == 0) || time.Since(settleStart) > o.settle || ctx.Err() != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	settled := time.Since(settleStart)

	failures := printResults(o, results, wall)
	fmt.Println()
	evRep.print()
	fmt.Printf("\nleaks (after the last cycle and %.1fs of settling; baseline taken after the warm-up cycle)\n", settled.Seconds())
	if len(probs) == 0 {
		fmt.Println("  none")
	}
	for _, p := range probs {
		fmt.Println("  " + p)
	}
	fmt.Printf("  (containerd's open fds: %d after the warm-up, %d at the end)\n", sum(base.fds), sum(inv.fds))
	ok := failures == 0 && evRep.clean() && len(probs) == 0
	fmt.Printf("\nverdict: %s\n", map[bool]string{true: "PASS", false: "FAIL"}[ok])
	if !ok { // the shims log to containerd's log; the directory goes on exit
		if b, err := os.ReadFile(e.Dir + "/containerd.log"); err == nil {
			kept := fmt.Sprintf("/tmp/soak-%s-containerd.log", e.NS)
			if os.WriteFile(kept, b, 0o644) == nil {
				fmt.Println("containerd's log (with the shims'): " + kept)
			}
		}
	}
	if !ok {
		return benchenv.ErrFailed
	}
	return nil
}

// soaker runs the cycles.
type soaker struct {
	e     *benchenv.Env
	c     *client.Client
	img   client.Image
	o     options
	fifos string // the client's fifo dir (private, so leftovers show)
	wall  time.Duration
}

// run runs the cycles on o.c workers and returns their results in the
// order they ended, with a progress line every 10%.
func (s *soaker) run(ctx context.Context, evs *events) []result {
	var (
		mu      sync.Mutex
		next    int
		results []result
		failed  int
		wg      sync.WaitGroup
	)
	every := max(1, s.o.n/10)
	start := time.Now()
	for w := 0; w < s.o.c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= s.o.n {
					return
				}
				id := fmt.Sprintf("soak-%d", i)
				r := s.cycle(ctx, id, false)
				if ctx.Err() != nil {
					return
				}
				if r.err == nil {
					evs.expect(id)
				}
				mu.Lock()
				results = append(results, r)
				if r.err != nil {
					failed++
					fmt.Fprintf(os.Stderr, "%s: %s failed: %v\n", id, r.failed, r.err)
				}
				if d := len(results); d%every == 0 || d == s.o.n {
					el := time.Since(start)
					fmt.Fprintf(os.Stderr, "%d/%d cycles (%d%%), %d failed, %s elapsed, %.1f cycles/min\n",
						d, s.o.n, 100*d/s.o.n, failed, el.Round(time.Second), float64(d)/el.Minutes())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	s.wall = time.Since(start)
	return results
}

// cycle is one container's life. On a failure it removes what the cycle
// made (task killed) so the next cycles start clean; leaks still show.
func (s *soaker) cycle(ctx context.Context, id string, warm bool) result {
	r := result{id: id, stepTime: map[string]time.Duration{}}
	begin := time.Now()
	var (
		ctr   client.Container
		task  client.Task
		exitC <-chan client.ExitStatus
	)
	do := func(step string, f func(ctx context.Context) error) bool {
		sctx, cancel := context.WithTimeout(ctx, s.o.timeout)
		defer cancel()
		t := time.Now()
		if err := f(sctx); err != nil {
			r.failed, r.err = step, err
			return false
		}
		r.stepTime[step] = time.Since(t)
		return true
	}
	ok := do("create", func(ctx context.Context) (err error) {
		ctr, err = s.c.NewContainer(ctx, id,
			client.WithImage(s.img),
			client.WithNewSnapshot(id+"-snap", s.img),
			client.WithRuntime(s.o.runtime, nil),
			client.WithNewSpec(oci.WithImageConfig(s.img), oci.WithProcessArgs("sleep", "600")))
		if err != nil {
			return fmt.Errorf("container: %w", err)
		}
		if task, err = ctr.NewTask(ctx, cio.NullIO); err != nil {
			return fmt.Errorf("task: %w", err)
		}
		return nil
	}) && do("start", func(ctx context.Context) (err error) {
		// Wait's context outlives the step: the exit comes in "kill".
		if exitC, err = task.Wait(context.WithoutCancel(ctx)); err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		return task.Start(ctx)
	}) && do("exec", func(ctx context.Context) error {
		return s.exec(ctx, ctr, task)
	}) && do("kill", func(ctx context.Context) error {
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
			return err
		}
		select {
		case st := <-exitC:
			if st.Error() != nil || st.ExitCode() != 137 {
				return fmt.Errorf("init exit status %d (%v), want 137", st.ExitCode(), st.Error())
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("no exit of the killed init: %w", ctx.Err())
		}
	}) && do("delete", func(ctx context.Context) error {
		if _, err := task.Delete(ctx); err != nil {
			return fmt.Errorf("task: %w", err)
		}
		task = nil
		if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			return fmt.Errorf("container: %w", err)
		}
		return nil
	})
	r.total = time.Since(begin)
	if !ok && ctx.Err() == nil && ctr != nil {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if task != nil {
			_, _ = task.Delete(cctx, client.WithProcessKill)
		}
		_ = ctr.Delete(cctx, client.WithSnapshotCleanup)
	}
	if warm && ok {
		fmt.Printf("warm-up cycle: %.0f ms\n", float64(r.total.Microseconds())/1000)
	}
	return r
}

// exec runs `echo exec-ok` in the task and checks its output and status.
func (s *soaker) exec(ctx context.Context, ctr client.Container, task client.Task) error {
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	ps := *spec.Process
	ps.Args, ps.Terminal = []string{"echo", strings.TrimSpace(execOut)}, false
	// one writer each (cio's copy of the fifo), read once the fifos closed;
	// runc's shim wants both paths
	var out, errb bytes.Buffer
	p, err := task.Exec(ctx, execID, &ps, cio.NewCreator(cio.WithStreams(nil, &out, &errb), cio.WithFIFODir(s.fifos)))
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	ch, err := p.Wait(ctx)
	if err != nil {
		return fmt.Errorf("wait: %w", err)
	}
	if err := p.Start(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	var st client.ExitStatus
	select {
	case st = <-ch:
	case <-ctx.Done():
		return fmt.Errorf("no exit: %w", ctx.Err())
	}
	ioDone := make(chan struct{})
	go func() { p.IO().Wait(); close(ioDone) }()
	select {
	case <-ioDone:
	case <-ctx.Done():
		return fmt.Errorf("output not closed after the exit: %w", ctx.Err())
	}
	if st.Error() != nil || st.ExitCode() != 0 || out.String() != execOut || errb.Len() > 0 {
		return fmt.Errorf("exit %d (%v), stdout %q, stderr %q; want 0, %q, none", st.ExitCode(), st.Error(), out.String(), errb.String(), execOut)
	}
	if _, err := p.Delete(ctx); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}

// printResults prints failures per step and the timings; it returns the
// number of failed cycles.
func printResults(o options, rs []result, wall time.Duration) int {
	fails := map[string][]result{}
	var total []float64
	per := map[string][]float64{}
	for _, r := range rs {
		if r.err != nil {
			fails[r.failed] = append(fails[r.failed], r)
			continue
		}
		total = append(total, ms(r.total))
		for st, d := range r.stepTime {
			per[st] = append(per[st], ms(d))
		}
	}
	nf := len(rs) - len(total)
	fmt.Printf("\n%s: %d cycles, %d ok, %d failed, %d worker(s)\n", o.runtime, len(rs), len(total), nf, o.c)
	fmt.Printf("  wall %.1fs, %.1f cycles/min\n", wall.Seconds(), float64(len(rs))/wall.Minutes())
	if len(total) > 0 {
		fmt.Printf("  %-10s %9s %9s %9s %9s   (ms, cycles that passed)\n", "", "median", "p90", "min", "max")
		for _, k := range append([]string{"cycle"}, steps...) {
			v := total
			if k != "cycle" {
				v = per[k]
			}
			sort.Float64s(v)
			fmt.Printf("  %-10s %9.0f %9.0f %9.0f %9.0f\n", k, benchenv.Median(v), benchenv.Quantile(v, 0.9), v[0], v[len(v)-1])
		}
	}
	fmt.Println("\nfailures per step")
	for _, st := range steps {
		fmt.Printf("  %-8s %d\n", st, len(fails[st]))
		for i, r := range fails[st] {
			if i == 3 {
				fmt.Printf("    ... %d more\n", len(fails[st])-3)
				break
			}
			fmt.Printf("    %s: %v\n", r.id, r.err)
		}
	}
	return nf
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// sortedKeys of a count map.
func sortedKeys(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func sum(m map[string]int) (n int) {
	for _, v := range m {
		n += v
	}
	return n
}
