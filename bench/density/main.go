// Command density starts N idle pods (a sandbox and one `sleep`
// container each) through containerd's CRI, first one after another and
// then all at once, with the msb runtime handler and with runc in the same
// run, and prints per N: start times (first, last, p50, p90), host memory
// per pod (the node's MemAvailable delta and the PSS of the pods' host
// processes, split into shim, VMM process, qemu and qemu's guest RAM, TCG
// cache, heap and mapped files), idle CPU per pod, and whether every pod
// answers an exec; then the ratios msb/runc. The containerd is
// test/critest's (setup.sh, cleanup.sh): CRI on, in a network namespace of
// its own, images from its loopback registry. See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/msb-dev/msb/bench/internal/benchenv"
)

// clkTck is the kernel's USER_HZ, the unit of /proc/PID/stat's times.
const clkTck = 100

type options struct {
	ns                 []int
	handlers, modes    []string
	timeout, settle    time.Duration
	cpuWindow          time.Duration
	exec               bool
	ksm                bool
	ksmScans           int64
	ksmWait            time.Duration
	ksmPages           int
	bin, critest, name string
	template           bool
}

// result is one run: N pods of one handler, started in one mode.
type result struct {
	handler, mode string
	n             int
	starts        []float64 // ms, sorted
	first, last   float64   // ms: the first and last pod started (seq) / the fastest and slowest (par)
	memAvailKiB   int64     // MemAvailable before - after
	pss           map[string]int64
	qemu          map[string]int64
	procs         int
	cpuPct        float64 // idle CPU per pod, % of one CPU
	execOK        int
	ksm           string
}

func main() {
	var o options
	nlist := flag.String("n", "1,10", "comma-separated pod counts (e.g. 1,10,30,50)")
	handlers := flag.String("handlers", "msb,runc", "CRI runtime handlers to run, in this order")
	modes := flag.String("modes", "seq,par", "seq: one pod after another; par: all N at once")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "limit on one pod's start (sandbox, create, start)")
	flag.DurationVar(&o.settle, "settle", 10*time.Second, "wait after the last start before memory is read")
	flag.DurationVar(&o.cpuWindow, "cpu", 5*time.Second, "window over which idle CPU is measured")
	flag.BoolVar(&o.exec, "exec", true, "exec `true` in every pod after the measurement")
	flag.BoolVar(&o.ksm, "ksm", false, "turn host KSM on for the run (restored at the end)")
	flag.Int64Var(&o.ksmScans, "ksm-scans", 3, "with -ksm: full scans ksmd makes before memory is read")
	flag.DurationVar(&o.ksmWait, "ksm-wait", 3*time.Minute, "with -ksm: longest wait for those scans")
	flag.IntVar(&o.ksmPages, "ksm-pages", 1000, "with -ksm: pages_to_scan per 20 ms")
	flag.StringVar(&o.bin, "bin", "", "directory with containerd-shim-msb-v2 and msb-runtime to use (default: the installed ones)")
	flag.StringVar(&o.critest, "critest-dir", "test/critest", "test/critest of this repository (setup.sh, cleanup.sh)")
	flag.BoolVar(&o.template, "template", false, "msb from a saved template (template = true, ADR 025), saved before the first pod")
	flag.StringVar(&o.name, "name", "msb-density", "name of the private containerd, netns and dirs (see test/critest/common.sh)")
	flag.Parse()
	benchenv.Main("density", func(ctx context.Context) error {
		for _, s := range strings.Split(*nlist, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				return fmt.Errorf("-n %q: want positive pod counts separated by commas, e.g. 1,10,30", *nlist)
			}
			o.ns = append(o.ns, n)
		}
		o.handlers = strings.Split(*handlers, ",")
		for _, h := range o.handlers {
			if h != "msb" && h != "runc" { // the handlers test/critest/setup.sh configures
				return fmt.Errorf("-handlers %q: want msb, runc or msb,runc", *handlers)
			}
		}
		o.modes = strings.Split(*modes, ",")
		for _, m := range o.modes {
			if m != "seq" && m != "par" {
				return fmt.Errorf("-modes %q: want seq, par or seq,par", *modes)
			}
		}
		return run(ctx, o)
	})
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (containerd, network namespaces, mounts)")
	}
	if o.ksm {
		k, kerr := enableKSM(o.ksmPages)
		defer k.restore()
		if kerr != nil {
			return kerr
		}
	}
	var tmplCfg string
	if o.template {
		dir, derr := os.MkdirTemp("", "density-template-")
		if derr != nil {
			return derr
		}
		defer os.RemoveAll(dir)
		if tmplCfg, err = templateConfig(dir); err != nil {
			return err
		}
	}
	n, err := newNode(ctx, o.critest, o.name, o.bin, tmplCfg)
	defer func() {
		if cerr := n.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	if err != nil {
		return err
	}
	if o.template {
		if err := fillTemplate(ctx, n, o.bin, tmplCfg); err != nil {
			return err
		}
	}
	t0 := time.Now()
	var results []result
	for _, N := range o.ns {
		for _, mode := range o.modes {
			for _, h := range o.handlers {
				r, err := measure(ctx, n, o, h, mode, N)
				if rerr := drain(n, o); rerr != nil {
					err = errors.Join(err, rerr)
				}
				if err != nil {
					return fmt.Errorf("%s N=%d %s: %w", h, N, mode, err)
				}
				printResult(r)
				results = append(results, r)
			}
		}
	}
	fmt.Printf("\nall runs: %.0f s\n", time.Since(t0).Seconds())
	printSummary(results)
	for _, r := range results {
		if r.execOK >= 0 && r.execOK < r.n {
			fmt.Printf("FAIL: %s N=%d %s: %d of %d pods did not answer an exec (stderr says why)\n", r.handler, r.n, r.mode, r.n-r.execOK, r.n)
			return benchenv.ErrFailed
		}
	}
	return nil
}

// measure starts N pods with handler h, reads memory and CPU, and checks
// that each answers an exec. The caller removes the pods (drain).
func measure(ctx context.Context, n *node, o options, h, mode string, N int) (result, error) {
	r := result{handler: h, mode: mode, n: N, pss: map[string]int64{}, qemu: map[string]int64{}}
	fmt.Fprintf(os.Stderr, "[density %s] %s: %d pods, %s\n", time.Now().Format("15:04:05"), h, N, modeName(mode))
	time.Sleep(2 * time.Second) // let the previous run's teardown settle
	before := memAvailableKiB()
	pods := make([]pod, N)
	name := func(i int) string { return fmt.Sprintf("d-%s-%s-%d-%d", h, mode, N, i) }
	if mode == "seq" {
		for i := range pods {
			if pods[i] = n.startPod(ctx, h, name(i), o.timeout); pods[i].err != nil {
				return r, pods[i].err
			}
		}
	} else {
		var wg sync.WaitGroup
		for i := range pods {
			wg.Add(1)
			go func() { defer wg.Done(); pods[i] = n.startPod(ctx, h, name(i), o.timeout) }()
		}
		wg.Wait()
		var errs []error
		for _, p := range pods {
			errs = append(errs, p.err)
		}
		if err := errors.Join(errs...); err != nil {
			return r, err
		}
	}
	for _, p := range pods {
		r.starts = append(r.starts, float64(p.start.Microseconds())/1000)
	}
	r.first, r.last = r.starts[0], r.starts[N-1]
	slices.Sort(r.starts)
	if mode == "par" {
		r.first, r.last = r.starts[0], r.starts[N-1]
	}
	if o.ksm {
		r.ksm = ksmSettle(ctx, o.ksmScans, o.ksmWait)
	} else {
		time.Sleep(o.settle)
	}
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	r.memAvailKiB = before - memAvailableKiB()
	ps := podProcs(n.sock, n.stateMsb)
	r.procs = len(ps)
	ticks0 := map[int]int64{}
	for _, p := range ps {
		r.pss[p.role] += pssKiB(p.pid)
		if p.role == roleQemu {
			for k, v := range qemuSplit(p.pid, p.args) {
				r.qemu[k] += v
			}
		}
		ticks0[p.pid] = cpuTicks(p.pid)
	}
	t0 := time.Now()
	time.Sleep(o.cpuWindow)
	var ticks int64
	for _, p := range ps {
		if t := cpuTicks(p.pid); t >= ticks0[p.pid] {
			ticks += t - ticks0[p.pid]
		}
	}
	r.cpuPct = 100 * float64(ticks) / clkTck / time.Since(t0).Seconds() / float64(N)
	r.execOK = -1 // not checked
	if o.exec {
		r.execOK = 0
		for _, p := range pods {
			if err := n.execOK(ctx, p, time.Minute); err != nil {
				fmt.Fprintf(os.Stderr, "density: %v\n", err)
				continue
			}
			r.execOK++
		}
	}
	return r, nil
}

// drain removes every pod and waits until their host processes are gone.
func drain(n *node, o options) error {
	err := n.removeAll(context.Background(), o.timeout+time.Minute)
	for i := 0; i < 600 && len(podProcs(n.sock, n.stateMsb)) > 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if left := podProcs(n.sock, n.stateMsb); len(left) > 0 {
		err = errors.Join(err, fmt.Errorf("%d pod processes still running 60 s after the pods were removed (first: pid %d %v)", len(left), left[0].pid, left[0].args))
	}
	return err
}

func modeName(m string) string {
	if m == "seq" {
		return "one after another"
	}
	return "all at once"
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

func (r result) pssTotal() int64 {
	var t int64
	for _, v := range r.pss {
		t += v
	}
	return t
}

// execs says how many pods answered the exec, "-" when none was run.
func (r result) execs() string {
	if r.execOK < 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", r.execOK, r.n)
}

func printResult(r result) {
	N := int64(r.n)
	fmt.Printf("\n%s, %d pods %s (ms from RunPodSandbox to StartContainer's return)\n", r.handler, r.n, modeName(r.mode))
	fmt.Printf("  start ms: first %.0f  last %.0f  p50 %.0f  p90 %.0f  min %.0f  max %.0f\n",
		r.first, r.last, benchenv.Median(r.starts), benchenv.Quantile(r.starts, 0.9), r.starts[0], r.starts[len(r.starts)-1])
	fmt.Printf("  memory per pod, MiB: MemAvailable delta %.1f; PSS of its %d host processes / N %.1f =", mib(r.memAvailKiB/N), r.procs, mib(r.pssTotal()/N))
	for _, role := range roles {
		if v, ok := r.pss[role]; ok {
			fmt.Printf(" %s %.1f", role, mib(v/N))
		}
	}
	fmt.Println()
	if len(r.qemu) > 0 {
		fmt.Printf("    qemu's PSS per pod, MiB:")
		for _, part := range qemuParts {
			fmt.Printf(" %s %.1f", part, mib(r.qemu[part]/N))
		}
		fmt.Println()
	}
	fmt.Printf("  idle CPU per pod: %.2f %% of one CPU; exec `true` answered: %s\n", r.cpuPct, r.execs())
	if r.ksm != "" {
		fmt.Printf("  %s\n", r.ksm)
	}
}

// printSummary prints one line per run and the ratios msb/runc of runs
// with the same N and mode, then the line for scripts.
func printSummary(rs []result) {
	fmt.Printf("\n%-6s %-4s %4s %8s %8s %8s %8s %9s %8s %7s %7s %7s %7s %7s %7s %6s %5s\n",
		"handler", "mode", "N", "first", "last", "p50", "p90", "MemAv/pod", "PSS/pod", "shim", "VMM", "qemu", "RAM", "TCG", "heap", "CPU%", "exec")
	for _, r := range rs {
		N := int64(r.n)
		fmt.Printf("%-7s %-4s %4d %8.0f %8.0f %8.0f %8.0f %9.1f %8.1f %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f %6.2f %5s\n",
			r.handler, r.mode, r.n, r.first, r.last, benchenv.Median(r.starts), benchenv.Quantile(r.starts, 0.9),
			mib(r.memAvailKiB/N), mib(r.pssTotal()/N), mib(r.pss[roleShim]/N), mib(r.pss[roleVMM]/N), mib(r.pss[roleQemu]/N),
			mib(r.qemu[partRAM]/N), mib(r.qemu[partTCG]/N), mib(r.qemu[partAnon]/N), r.cpuPct, r.execs())
	}
	var last *result
	for i, r := range rs {
		if r.handler != "msb" {
			continue
		}
		if last == nil || r.n >= last.n {
			last = &rs[i]
		}
		for _, b := range rs {
			if b.handler == "runc" && b.n == r.n && b.mode == r.mode {
				// runc's MemAvailable delta is a few MiB per pod: at small N
				// it is within what other work on the node moves.
				memRatio := "n/a (a delta under 1 MiB/pod: noise)"
				if b.memAvailKiB >= 1024*int64(b.n) && r.memAvailKiB >= 1024*int64(r.n) {
					memRatio = fmt.Sprintf("%.1fx", float64(r.memAvailKiB)/float64(b.memAvailKiB))
				}
				fmt.Printf("ratio msb/runc %-4s N=%-3d first %.1fx last %.1fx p50 %.1fx, PSS/pod %.1fx, MemAvailable/pod %s\n",
					r.mode, r.n, r.first/b.first, r.last/b.last, benchenv.Median(r.starts)/benchenv.Median(b.starts),
					float64(r.pssTotal())/float64(max(b.pssTotal(), 1)), memRatio)
			}
		}
	}
	if last == nil && len(rs) > 0 {
		last = &rs[len(rs)-1]
	}
	if last != nil {
		fmt.Printf("N=%d per-pod %.1f MiB first %.0f ms last %.0f ms\n", last.n, mib(last.memAvailKiB/int64(last.n)), last.first, last.last)
	}
}
