// Command ctrrun compares, in one run, `ctr run --rm IMG true` with runc
// (io.containerd.runc.v2) and with msb (io.containerd.msb.v2) against a
// private containerd, each also "with network" (the container's namespace
// holds a veth on a bridge, as CNI's bridge plugin leaves it; msb wires it
// into the guest), then the host memory (RSS and PSS) each runtime adds
// per running container: the runc shim; the msb shim, VMM process and qemu.
//
//	go run ./bench/ctrrun [-n 20] [-bin DIR] [-settle 3s]   (as root)
//
// containerd and ctr are found as test/containerdtest finds them
// ($MSB_TEST_CONTAINERD, PATH, /var/cache/msb/bin); msb-runtime and
// containerd-shim-msb-v2 are built from this repo unless -bin names a
// directory holding both. MSB_CONFIG, if set, passes through to the shim.
// Everything it starts or mounts is removed on exit, also on Ctrl-C.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/hack/mkimage/ociimage"
	"github.com/msb-dev/msb/test/containerdtest"
)

// The runtimes compared; containerd runs io.containerd.NAME.v2 as the
// shim binary containerd-shim-NAME-v2.
var runtimes = []struct{ typ, name string }{{"io.containerd.runc.v2", "runc"}, {"io.containerd.msb.v2", "msb"}}

func main() {
	n := flag.Int("n", 20, "timed runs per runtime")
	bin := flag.String("bin", "", "directory with msb-runtime and containerd-shim-msb-v2 (default: build them from this repo)")
	settle := flag.Duration("settle", 3*time.Second, "wait after a container started before reading its memory")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, *n, *bin, *settle); err != nil {
		if ctx.Err() != nil {
			err = errors.New("interrupted; cleaned up")
		}
		fmt.Fprintln(os.Stderr, "ctrrun:", err)
		os.Exit(1)
	}
}

// env is the private containerd and everything under its directory.
type env struct {
	dir, ns, addr, stateRoot, containerd, ctr string
	environ                                   []string
	cmd                                       *exec.Cmd
	done                                      chan struct{}
}

func bench(ctx context.Context, n int, bin string, settle time.Duration) error {
	if n < 1 || os.Geteuid() != 0 {
		return errors.New("needs root (containerd, runc, mounts) and -n >= 1")
	}
	cbin, ctrBin, err := containerdtest.Find()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("/tmp", "msbc-") // short: Unix socket paths
	if err != nil {
		return err
	}
	e := &env{dir: dir, ns: "bench-" + strings.TrimPrefix(filepath.Base(dir), "msbc-"),
		addr: dir + "/c.sock", stateRoot: dir + "/s", containerd: cbin, ctr: ctrBin}
	defer e.cleanup()
	if bin == "" {
		bin, err = build(ctx, dir+"/bin")
	} else {
		bin, err = filepath.Abs(bin) // containerd runs in dir
	}
	if err != nil {
		return err
	}
	path := strings.Join([]string{bin, filepath.Dir(cbin), containerdtest.CacheBin, os.Getenv("PATH"), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, ":")
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.Contains(" PATH NOTIFY_SOCKET LISTEN_FDS LISTEN_PID MSB_SHIM_STATE_ROOT ", " "+k+" ") {
			e.environ = append(e.environ, kv)
		}
	}
	e.environ = append(e.environ, "PATH="+path, "MSB_SHIM_STATE_ROOT="+e.stateRoot)
	for _, name := range []string{"msb-runtime", "containerd-shim-msb-v2", "containerd-shim-runc-v2", "runc"} {
		p := lookPath(path, name)
		if p == "" || (strings.Contains(name, "msb") && filepath.Dir(p) != filepath.Clean(bin)) {
			return fmt.Errorf("%s not found (in %s)", name, bin)
		}
		fmt.Printf("%-24s %s\n", name, p)
	}
	if err := e.start(); err != nil {
		return err
	}
	v, _ := exec.Command(cbin, "--version").Output()
	fmt.Printf("%-24s %s (%s), private, namespace %s\n", "containerd", cbin, bytes.TrimSpace(v), e.ns)
	img, tar := ociimage.DefaultName, dir+"/busybox.tar"
	if _, err := ociimage.WriteFile(tar, ociimage.Options{Name: img}); err != nil {
		return fmt.Errorf("busybox image (needs /bin/busybox, busybox-static): %w", err)
	}
	if _, err := e.ctrRun(ctx, "image", "import", tar); err != nil {
		return err
	}
	// Warm-up, untimed: also shows which kernel each runtime runs on.
	for _, rt := range runtimes {
		out, err := e.ctrRun(ctx, "run", "--rm", "--runtime", rt.typ, img, "warm-"+rt.name, "uname", "-r")
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
	times := map[string][]float64{}
	for i := 0; i < n; i++ {
		var line []string
		for j := range runtimes {
			rt := runtimes[(i+j)%2] // alternate which goes first
			for _, withNet := range []bool{false, true} {
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
				if _, err := e.ctrRun(ctx, append(args, img, fmt.Sprintf("t%d-%s", i, strings.ReplaceAll(key, "+", "-")), "true")...); err != nil {
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
			fmt.Printf("  %-42s %8.1f %8.1f %8.1f %8.1f\n", label, median(s), s[int(math.Ceil(0.9*float64(len(s))))-1], s[0], s[len(s)-1])
		}
	}
	fmt.Printf("  ratio msb/runc (medians) %.1fx; with network %.1fx; network's cost msb %+.0f ms, runc %+.0f ms\n",
		median(times["msb"])/median(times["runc"]), median(times["msb+net"])/median(times["runc+net"]),
		median(times["msb+net"])-median(times["msb"]), median(times["runc+net"])-median(times["runc"]))
	return e.memory(ctx, img, settle)
}

// build builds msb-runtime and the shim into dir (the shim runs the
// msb-runtime beside it as its VMM process).
func build(ctx context.Context, dir string) (string, error) {
	const cmd = "github.com/msb-dev/msb/cmd/"
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", cmd+"msb-runtime", cmd+"containerd-shim-msb-v2").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build (run this inside the msb repo, or pass -bin): %v\n%s", err, out)
	}
	return dir, nil
}

// proc is a host process, with its memory in KiB.
type proc struct {
	pid, rss, pss int
	role          string
	args          []string
}

// memory starts one sleeping container per runtime and prints the RSS and
// PSS of the processes each runtime runs on the host for it.
func (e *env) memory(ctx context.Context, img string, settle time.Duration) error {
	for _, rt := range runtimes {
		if _, err := e.ctrRun(ctx, "run", "-d", "--runtime", rt.typ, img, "mem-"+rt.name, "sleep", "3600"); err != nil {
			return err
		}
	}
	if time.Sleep(settle); ctx.Err() != nil {
		return ctx.Err()
	}
	fmt.Printf("\nhost memory per running container (`sleep`, read %s after start), MiB\n", settle)
	fmt.Printf("  %-32s %7s %8s %8s\n", "process", "pid", "RSS", "PSS")
	accel := "?"
	vmDir := filepath.Join(e.stateRoot, e.ns, "mem-msb")
	for _, rt := range runtimes {
		var ps []proc
		for _, p := range allProcs() {
			a, all := p.args, " "+strings.Join(p.args, " ")+" "
			switch {
			case filepath.Base(a[0]) == "containerd-shim-"+rt.name+"-v2" && strings.Contains(all, " -id mem-"+rt.name+" ") && strings.Contains(all, " "+e.addr+" "):
				p.role = "shim"
			case rt.name != "msb" || !strings.Contains(all, vmDir+" ") && !strings.Contains(all, vmDir+"/"):
				continue
			case len(a) == 3 && a[1] == "vmm":
				p.role = "VMM process (msb-runtime vmm)"
			case strings.Contains(filepath.Base(a[0]), "qemu"):
				p.role = "qemu"
				if _, r, ok := strings.Cut(all, " -accel "); ok {
					accel = strings.Fields(r)[0]
				}
			default:
				p.role = "other: " + filepath.Base(a[0])
			}
			p.rss, p.pss = memKiB(p.pid)
			ps = append(ps, p)
		}
		if len(ps) == 0 || (rt.name == "msb" && len(ps) < 3) {
			return fmt.Errorf("%s: found only %v of shim, VMM process and qemu", rt.name, ps)
		}
		var rss, pss int
		fmt.Printf("  %s\n", rt.typ)
		for _, p := range ps {
			fmt.Printf("    %-30s %7d %8.1f %8.1f\n", p.role, p.pid, mib(p.rss), mib(p.pss))
			rss, pss = rss+p.rss, pss+p.pss
		}
		fmt.Printf("    %-30s %7s %8.1f %8.1f\n", "total per container", "", mib(rss), mib(pss))
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

func allProcs() []proc {
	var out []proc
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && len(b) > 0 {
			out = append(out, proc{pid: pid, args: strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")})
		}
	}
	return out
}

// memKiB reads Rss and Pss from /proc/PID/smaps_rollup.
func memKiB(pid int) (rss, pss int) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Rss:" {
			rss, _ = strconv.Atoi(f[1])
		} else if len(f) >= 2 && f[0] == "Pss:" {
			pss, _ = strconv.Atoi(f[1])
		}
	}
	return rss, pss
}

// start starts containerd with its own root, state, sockets and config
// (CRI off: `ctr run --runtime` names the shim itself).
func (e *env) start() error {
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
temp = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri"]
[grpc]
address = %q
[ttrpc]
address = %q
[plugins.'io.containerd.internal.v1.opt']
path = %q
`, e.dir+"/root", e.dir+"/state", e.dir+"/tmp", e.addr, e.addr+".ttrpc", e.dir+"/opt")
	if err := os.WriteFile(e.dir+"/config.toml", []byte(cfg), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(e.dir + "/containerd.log")
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(e.containerd, "--config", e.dir+"/config.toml")
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = e.environ, e.dir, logf, logf
	// its own process group (^C is ours to handle), killed if we die
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	e.cmd, e.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(e.done) }()
	for i := 0; i < 600; i++ { // 30 s
		if c, err := net.Dial("unix", e.addr); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-e.done:
			log, _ := os.ReadFile(e.dir + "/containerd.log")
			return fmt.Errorf("containerd exited at start: %s", log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("containerd not serving after 30 s")
}

// ctrRun runs ctr against the private containerd, 5 min at most.
func (e *env) ctrRun(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.ctr, append([]string{"--address", e.addr, "--namespace", e.ns}, args...)...)
	var out, errb bytes.Buffer
	cmd.Env, cmd.Stdout, cmd.Stderr = e.environ, &out, &errb
	if err := cmd.Run(); err != nil && ctx.Err() != nil {
		return "", fmt.Errorf("ctr %s: %w", strings.Join(args, " "), context.Cause(ctx))
	} else if err != nil {
		return "", fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// cleanup deletes tasks and containers, stops containerd, kills what is
// left of ours (shims, VMMs, qemu, runc containers), unmounts and removes
// the directory, runc's state and the namespace's cgroups.
func (e *env) cleanup() {
	bg := context.Background()
	if e.cmd != nil {
		tasks, _ := e.ctrRun(bg, "task", "ls", "-q")
		for _, id := range strings.Fields(tasks) {
			_, _ = e.ctrRun(bg, "task", "delete", "--force", id)
		}
		if ids, _ := e.ctrRun(bg, "container", "ls", "-q"); len(strings.Fields(ids)) > 0 {
			_, _ = e.ctrRun(bg, append([]string{"container", "delete"}, strings.Fields(ids)...)...)
		}
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
			<-e.done
		}
	}
	// shims finish `delete` in the background: 5 s, then SIGKILL
	for i := 0; i < 100; i++ {
		var left int
		for _, p := range allProcs() {
			cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
			if strings.Contains(strings.Join(p.args, " "), e.dir+"/") || strings.Contains(string(cg), "/"+e.ns+"/") {
				left++
				if i >= 50 {
					_ = syscall.Kill(p.pid, syscall.SIGKILL)
				}
			}
		}
		if left == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var mps []string
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], e.dir+"/") {
			mps = append(mps, strings.ReplaceAll(f[4], `\040`, " "))
		}
	}
	sort.Slice(mps, func(a, b int) bool { return len(mps[a]) > len(mps[b]) }) // deepest first
	for _, mp := range mps {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
	}
	_ = os.RemoveAll(filepath.Join("/run/containerd/runc", e.ns))
	cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", e.ns)) // v1: one per controller
	for _, d := range append(cgroups, filepath.Join("/sys/fs/cgroup", e.ns)) {
		removeCgroup(d)
	}
	if err := os.RemoveAll(e.dir); err != nil {
		fmt.Fprintln(os.Stderr, "ctrrun: cleanup:", err)
	}
}

// removeCgroup removes a cgroup directory, children first.
func removeCgroup(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, d := range ents {
		if d.IsDir() {
			removeCgroup(filepath.Join(dir, d.Name()))
		}
	}
	_ = os.Remove(dir)
}

// lookPath finds name on path, as containerd and its shims will.
func lookPath(path, name string) string {
	for _, d := range filepath.SplitList(path) {
		if st, err := os.Stat(filepath.Join(d, name)); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return filepath.Join(d, name)
		}
	}
	return ""
}

// median of sorted s.
func median(s []float64) float64 { return (s[(len(s)-1)/2] + s[len(s)/2]) / 2 }

func mib(kib int) float64 { return float64(kib) / 1024 }
