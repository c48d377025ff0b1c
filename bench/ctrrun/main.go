// Command ctrrun compares, in one run, `ctr run --rm IMG true` with runc
// (io.containerd.runc.v2) and with msb (io.containerd.msb.v2) against a
// private containerd, each also "with network" (the container's namespace
// holds a veth on a bridge, as CNI's bridge plugin leaves it; msb wires it
// into the guest), msb warm (a pool of one booted VM, ADR 020) and msb
// from a template (nothing parked, ADR 025); then
// msb-runtime run's start phases (agent ready, first output: package
// phases) and the host memory (RSS and PSS) each runtime adds per running
// container: the runc shim; the msb shim, VMM process and qemu.
//
//	go run ./bench/ctrrun [-n 20] [-bin DIR] [-settle 3s] [-warm=true] [-template=true] [-phases 5]   (as root)
//
// containerd and ctr are found as test/containerdtest finds them
// ($MSB_TEST_CONTAINERD, PATH, /var/cache/msb/bin); msb-runtime and
// containerd-shim-msb-v2 are built from this repo unless -bin names a
// directory holding both. MSB_CONFIG, if set, passes through to the shim.
// Everything it starts or mounts is removed on exit, also on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/msb-dev/msb/bench/internal/benchenv"
	"github.com/msb-dev/msb/bench/internal/phases"
	"github.com/msb-dev/msb/vmm"
)

// The runtimes compared; containerd runs io.containerd.NAME.v2 as the
// shim binary containerd-shim-NAME-v2.
var runtimes = []struct{ typ, name string }{{"io.containerd.runc.v2", "runc"}, {"io.containerd.msb.v2", "msb"}}

func main() {
	n := flag.Int("n", 20, "timed runs per runtime")
	bin := flag.String("bin", "", "directory with msb-runtime and containerd-shim-msb-v2 (default: build them from this repo)")
	settle := flag.Duration("settle", 3*time.Second, "wait after a container started before reading its memory")
	warm := flag.Bool("warm", true, "also time msb with a pool of one booted VM (pool_size = 1, ADR 020)")
	template := flag.Bool("template", true, "also time msb started from a saved template, nothing parked (template = true, ADR 025)")
	phaseRuns := flag.Int("phases", 5, "msb-runtime run phase runs after the ctr runs (0: none)")
	before := flag.String("before", "", "directory with an older build's msb-runtime and containerd-shim-msb-v2, timed beside this one (e.g. a change's cost)")
	flag.Parse()
	benchenv.Main("ctrrun", func(ctx context.Context) error {
		return bench(ctx, *n, *bin, *before, *settle, *warm, *template, *phaseRuns)
	})
}

func bench(ctx context.Context, n int, bin, before string, settle time.Duration, warm, template bool, phaseRuns int) error {
	if n < 1 {
		return errors.New("-n must be >= 1")
	}
	e, err := benchenv.New(ctx, "ctrrun", bin, true, slices.Concat(benchenv.MsbBins, []string{"containerd-shim-runc-v2", "runc"}))
	defer e.Cleanup()
	if err != nil {
		return err
	}
	img, err := e.ImportBusybox(ctx)
	if err != nil {
		return err
	}
	// An older build runs as the shim at its absolute path (containerd
	// takes a path as a runtime), which finds its msb-runtime beside it.
	timed := runtimes
	if before != "" {
		shim, err := filepath.Abs(filepath.Join(before, "containerd-shim-msb-v2"))
		if err != nil {
			return err
		}
		timed = append(slices.Clone(runtimes), struct{ typ, name string }{shim, "msb-before"})
		out, err := e.CtrRun(ctx, "run", "--rm", "--runtime", shim, img, "warm-before", "uname", "-r")
		if err != nil {
			return fmt.Errorf("-before: %w", err)
		}
		fmt.Printf("warm-up %-4s uname -r: %s\n", "msb-before", strings.TrimSpace(out))
	}
	// Warm-up, untimed: also shows which kernel each runtime runs on.
	for _, rt := range runtimes {
		out, err := e.CtrRun(ctx, "run", "--rm", "--runtime", rt.typ, img, "warm-"+rt.name, "uname", "-r")
		if err != nil {
			return err
		}
		fmt.Printf("warm-up %-4s uname -r: %s\n", rt.name, strings.TrimSpace(out))
	}
	bn, err := newBenchNet()
	if bn != nil {
		defer bn.cleanup()
	}
	if err != nil {
		return fmt.Errorf("bench network: %w", err)
	}
	var modes []warmMode
	if warm {
		modes = append(modes, modePool)
	}
	if template {
		modes = append(modes, modeTemplate)
	}
	pools := map[string]*warmPool{}
	for _, m := range modes {
		wp, err := newWarmPool(ctx, e, m)
		if err != nil {
			return fmt.Errorf("%s: %w", m.key, err)
		}
		defer wp.drain(ctx)
		pools[m.key] = wp
	}
	times := map[string][]float64{}
	for i := 0; i < n; i++ {
		var line []string
		for _, m := range modes {
			d, err := pools[m.key].run(ctx, img, fmt.Sprintf("t%d-%s", i, m.key))
			if err != nil {
				return err
			}
			times[m.key] = append(times[m.key], d)
			line = append(line, fmt.Sprintf("%s %.0f ms", m.key, d))
		}
		for j := range timed {
			rt := timed[(i+j)%len(timed)] // alternate which goes first
			nets := []bool{false, true}
			if rt.name == "msb-before" {
				nets = nets[:1] // start time alone
			}
			for _, withNet := range nets {
				args := []string{"run", "--rm", "--runtime", rt.typ}
				key := rt.name
				if withNet {
					// A namespace wired like CNI's bridge plugin leaves it.
					ns, err := bn.container()
					if err != nil {
						return fmt.Errorf("bench network: %w", err)
					}
					args = append(args, "--with-ns", "network:"+ns)
					key += "+net"
				}
				start := time.Now()
				if _, err := e.CtrRun(ctx, append(args, img, fmt.Sprintf("t%d-%s", i, strings.ReplaceAll(key, "+", "-")), "true")...); err != nil {
					return err
				}
				d := float64(time.Since(start).Microseconds()) / 1000
				times[key] = append(times[key], d)
				line = append(line, fmt.Sprintf("%s %.0f ms", key, d))
			}
		}
		fmt.Fprintf(os.Stderr, "run %d/%d: %s\n", i+1, n, strings.Join(line, ", "))
	}
	fmt.Printf("\n`ctr run --rm %s true`, %d runs each, interleaved (wall ms, ctr start to exit)\n", img, n)
	fmt.Printf("  %-42s %8s %8s %8s %8s\n", "runtime", "median", "p90", "min", "max")
	for _, rt := range runtimes {
		for _, key := range []string{rt.name, rt.name + "+net"} {
			s := times[key]
			sort.Float64s(s)
			label := rt.typ
			if key != rt.name {
				label += " with network (veth)"
			}
			fmt.Printf("  %-42s %8.1f %8.1f %8.1f %8.1f\n", label, benchenv.Median(s), benchenv.Quantile(s, 0.9), s[0], s[len(s)-1])
		}
	}
	for _, m := range modes {
		s := times[m.key]
		sort.Float64s(s)
		fmt.Printf("  %-42s %8.1f %8.1f %8.1f %8.1f\n", m.label, benchenv.Median(s), benchenv.Quantile(s, 0.9), s[0], s[len(s)-1])
	}
	if s := times["msb-before"]; len(s) > 0 {
		sort.Float64s(s)
		fmt.Printf("  %-42s %8.1f %8.1f %8.1f %8.1f\n", "io.containerd.msb.v2 before (-before)", benchenv.Median(s), benchenv.Quantile(s, 0.9), s[0], s[len(s)-1])
		fmt.Printf("  this build vs before (medians): %+.0f ms (%.2fx)\n", benchenv.Median(times["msb"])-benchenv.Median(s), benchenv.Median(times["msb"])/benchenv.Median(s))
	}
	fmt.Printf("  ratio msb/runc (medians) %.1fx; with network %.1fx; network's cost msb %+.0f ms, runc %+.0f ms\n",
		benchenv.Median(times["msb"])/benchenv.Median(times["runc"]), benchenv.Median(times["msb+net"])/benchenv.Median(times["runc+net"]),
		benchenv.Median(times["msb+net"])-benchenv.Median(times["msb"]), benchenv.Median(times["runc+net"])-benchenv.Median(times["runc"]))
	for _, m := range modes {
		fmt.Printf("  ratio %s/runc (medians) %.1fx\n", m.key, benchenv.Median(times[m.key])/benchenv.Median(times["runc"]))
	}
	if warm && template {
		fmt.Printf("  ratio template/warm pool (medians) %.2fx\n", benchenv.Median(times["msb-template"])/benchenv.Median(times["msb-warm"]))
	}
	if phaseRuns > 0 {
		fmt.Println()
		runc := benchenv.LookPath(e.Path, "runc")
		if err := phases.Run(phaseRuns, filepath.Join(e.Bin, "msb-runtime"), runc); err != nil {
			return fmt.Errorf("phases: %w", err)
		}
	}
	return memory(ctx, e, img, settle)
}

// proc is a host process, with its memory in KiB: rss splits into anon
// (heap, stacks, written data) and file (mapped pages of the binary and
// its libraries, shared with every process that maps them).
type proc struct {
	benchenv.Proc
	rss, pss, anon int
	role           string
}

// memory starts one sleeping container per runtime and prints the RSS and
// PSS of the processes each runtime runs on the host for it.
func memory(ctx context.Context, e *benchenv.Env, img string, settle time.Duration) error {
	for _, rt := range runtimes {
		if _, err := e.CtrRun(ctx, "run", "-d", "--runtime", rt.typ, img, "mem-"+rt.name, "sleep", "3600"); err != nil {
			return err
		}
	}
	if time.Sleep(settle); ctx.Err() != nil {
		return ctx.Err()
	}
	fmt.Printf("\nhost memory per running container (`sleep`, read %s after start), MiB\n", settle)
	fmt.Printf("  %-32s %7s %8s %8s %8s %8s\n", "process", "pid", "RSS", "PSS", "anon", "file")
	accel := "?"
	vmDir := vmm.StateDirPath(filepath.Join(e.StateRoot, e.NS), "mem-msb")
	for _, rt := range runtimes {
		var ps []proc
		vmmPid := 0
		all := benchenv.AllProcs()
		for _, bp := range all {
			p := proc{Proc: bp}
			a, line := p.Args, " "+strings.Join(p.Args, " ")+" "
			switch {
			case filepath.Base(a[0]) == "containerd-shim-"+rt.name+"-v2" && strings.Contains(line, " -id mem-"+rt.name+" ") && strings.Contains(line, " "+e.Addr+" "):
				p.role = "shim"
			case rt.name == "msb" && len(a) == 3 && a[1] == "vmm" && a[2] == vmDir:
				p.role, vmmPid = "VMM process (msb-runtime vmm)", p.Pid
			default:
				continue
			}
			ps = append(ps, p)
		}
		// The hypervisor is the VMM's child; its command line need not name
		// the VM's directory.
		for _, bp := range all {
			if vmmPid == 0 || parentPid(bp.Pid) != vmmPid {
				continue
			}
			p := proc{Proc: bp, role: "other: " + filepath.Base(bp.Args[0])}
			if strings.Contains(filepath.Base(bp.Args[0]), "qemu") {
				p.role = "qemu"
				if i := slices.Index(bp.Args, "-accel"); i >= 0 && i+1 < len(bp.Args) {
					accel = bp.Args[i+1]
				}
			}
			ps = append(ps, p)
		}
		for i := range ps {
			ps[i].rss, ps[i].pss, ps[i].anon = memKiB(ps[i].Pid)
		}
		if len(ps) == 0 || (rt.name == "msb" && len(ps) < 3) {
			return fmt.Errorf("%s: found only %v of shim, VMM process and qemu", rt.name, ps)
		}
		var rss, pss, anon int
		fmt.Printf("  %s\n", rt.typ)
		for _, p := range ps {
			fmt.Printf("    %-30s %7d %8.1f %8.1f %8.1f %8.1f\n", p.role, p.Pid, mib(p.rss), mib(p.pss), mib(p.anon), mib(p.rss-p.anon))
			rss, pss, anon = rss+p.rss, pss+p.pss, anon+p.anon
		}
		fmt.Printf("    %-30s %7s %8.1f %8.1f %8.1f %8.1f\n", "total per container", "", mib(rss), mib(pss), mib(anon), mib(rss-anon))
	}
	kind := map[bool]string{true: "KVM", false: "TCG (software emulation)"}[strings.HasPrefix(accel, "kvm")]
	fmt.Printf("\nmsb VMs ran under %s: qemu -accel %s\n", kind, accel)
	log, _ := os.ReadFile(vmDir + "/vmm.log")
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, "falling back") || strings.Contains(l, "backend auto") || strings.Contains(l, "KVM not usable") {
			fmt.Printf("  vmm.log: %.160s\n", l)
		}
	}
	return nil
}

// parentPid reads a process's parent from /proc/PID/stat; 0 if unknown.
func parentPid(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// pid (comm) state ppid …; comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// memKiB reads Rss, Pss and Anonymous from /proc/PID/smaps_rollup.
func memKiB(pid int) (rss, pss, anon int) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "Rss:":
			rss = n
		case "Pss:":
			pss = n
		case "Anonymous:":
			anon = n
		}
	}
	return rss, pss, anon
}

func mib(kib int) float64 { return float64(kib) / 1024 }
