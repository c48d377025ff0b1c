// Package benchenv is what the containerd benchmarks (bench/ctrrun,
// bench/soak) share: a private containerd (own root, state, sockets and
// config under /tmp/msbc-*, CRI off, a namespace of its own) whose PATH
// has msb's shim built from this repo first, the busybox image, ctr bound
// to it, and a cleanup that leaves no process, mount or directory behind.
package benchenv

import (
	"bytes"
	"context"
	"errors"
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

// ErrFailed, from Main's function, exits 1 with nothing more said: the
// benchmark printed its verdict.
var ErrFailed = errors.New("failed")

// Main runs f with a context that Ctrl-C and SIGTERM cancel (f cleans up
// and returns) and exits 1 if f fails, saying why.
func Main(name string, f func(ctx context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := f(ctx)
	if err != nil && ctx.Err() != nil {
		err = errors.New("interrupted; cleaned up")
	}
	stop() // cancels ctx
	if err == nil {
		return
	}
	if !errors.Is(err, ErrFailed) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	}
	os.Exit(1)
}

// MsbBins are the binaries msb's runtime needs, built from this repo or
// taken from -bin: the shim runs the msb-runtime beside it as its VMM
// process.
var MsbBins = []string{"msb-runtime", "containerd-shim-msb-v2"}

// Env is the private containerd and everything under its directory.
type Env struct {
	Name      string // the benchmark's name, for messages
	Dir       string // everything lives under here (a short /tmp path: Unix sockets)
	NS        string // the containerd namespace made for this run
	Addr      string // containerd's gRPC socket
	StateRoot string // msb's shim state root (MSB_SHIM_STATE_ROOT)
	Ctr       string // the ctr binary
	Bin       string // the directory of msb's binaries ("" without msb)
	Path      string // containerd's PATH
	Environ   []string

	containerd string
	cmd        *exec.Cmd
	done       chan struct{}
}

// New makes the directory, builds msb's binaries into it (when msb is set
// and bin is empty; else they come from bin), checks that each of need is
// on containerd's PATH (printing where), and starts containerd. It returns
// the Env as soon as there is something to clean up: call Cleanup even
// when it also returns an error.
func New(ctx context.Context, name, bin string, msb bool, need []string) (*Env, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (containerd, runc, mounts)")
	}
	cbin, ctrBin, err := containerdtest.Find()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("/tmp", "msbc-") // short: Unix socket paths
	if err != nil {
		return nil, err
	}
	e := &Env{Name: name, Dir: dir, NS: "bench-" + strings.TrimPrefix(filepath.Base(dir), "msbc-"),
		Addr: dir + "/c.sock", StateRoot: dir + "/s", containerd: cbin, Ctr: ctrBin}
	var pathDirs []string
	if msb {
		if bin == "" {
			bin, err = build(ctx, dir+"/bin")
		} else {
			bin, err = filepath.Abs(bin) // containerd runs in dir
		}
		if err != nil {
			return e, err
		}
		pathDirs = append(pathDirs, bin)
		e.Bin = bin
	}
	path := strings.Join(append(pathDirs, filepath.Dir(cbin), containerdtest.CacheBin, os.Getenv("PATH"), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ":")
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.Contains(" PATH NOTIFY_SOCKET LISTEN_FDS LISTEN_PID MSB_SHIM_STATE_ROOT ", " "+k+" ") {
			e.Environ = append(e.Environ, kv)
		}
	}
	e.Path = path
	e.Environ = append(e.Environ, "PATH="+path, "MSB_SHIM_STATE_ROOT="+e.StateRoot)
	for _, n := range need {
		p := LookPath(path, n)
		if p == "" || (strings.Contains(n, "msb") && filepath.Dir(p) != filepath.Clean(bin)) {
			return e, fmt.Errorf("%s not found (on %s)", n, path)
		}
		fmt.Printf("%-24s %s\n", n, p)
	}
	if err := e.start(); err != nil {
		return e, err
	}
	v, _ := exec.Command(cbin, "--version").Output()
	fmt.Printf("%-24s %s (%s), private, namespace %s\n", "containerd", cbin, bytes.TrimSpace(v), e.NS)
	return e, nil
}

// build builds msb's binaries into dir.
func build(ctx context.Context, dir string) (string, error) {
	args := []string{"build", "-o", dir + "/"}
	for _, b := range MsbBins {
		args = append(args, "github.com/msb-dev/msb/cmd/"+b)
	}
	if out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build (run this inside the msb repo, or pass -bin): %v\n%s", err, out)
	}
	return dir, nil
}

// start starts containerd with its own root, state, sockets and config
// (CRI off: clients name the runtime themselves).
func (e *Env) start() error {
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
`, e.Dir+"/root", e.Dir+"/state", e.Dir+"/tmp", e.Addr, e.Addr+".ttrpc", e.Dir+"/opt")
	if err := os.WriteFile(e.Dir+"/config.toml", []byte(cfg), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(e.Dir + "/containerd.log")
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(e.containerd, "--config", e.Dir+"/config.toml")
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = e.Environ, e.Dir, logf, logf
	// its own process group (^C is ours to handle), killed if we die
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	e.cmd, e.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(e.done) }()
	for i := 0; i < 600; i++ { // 30 s
		if c, err := net.Dial("unix", e.Addr); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-e.done:
			log, _ := os.ReadFile(e.Dir + "/containerd.log")
			return fmt.Errorf("containerd exited at start: %s", log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("containerd not serving after 30 s")
}

// Pid is containerd's pid (0 when not started).
func (e *Env) Pid() int {
	if e.cmd == nil || e.cmd.Process == nil {
		return 0
	}
	return e.cmd.Process.Pid
}

// ImportBusybox makes the busybox image (hack/mkimage/ociimage, from
// /bin/busybox) and imports it; it returns the image's name.
func (e *Env) ImportBusybox(ctx context.Context) (string, error) {
	img, tar := ociimage.DefaultName, e.Dir+"/busybox.tar"
	if _, err := ociimage.WriteFile(tar, ociimage.Options{Name: img}); err != nil {
		return "", fmt.Errorf("busybox image (needs /bin/busybox, busybox-static): %w", err)
	}
	if _, err := e.CtrRun(ctx, "image", "import", tar); err != nil {
		return "", err
	}
	return img, nil
}

// CtrRun runs ctr against the private containerd, 5 min at most.
func (e *Env) CtrRun(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Ctr, append([]string{"--address", e.Addr, "--namespace", e.NS}, args...)...)
	var out, errb bytes.Buffer
	cmd.Env, cmd.Stdout, cmd.Stderr = e.Environ, &out, &errb
	if err := cmd.Run(); err != nil && ctx.Err() != nil {
		return "", fmt.Errorf("ctr %s: %w", strings.Join(args, " "), context.Cause(ctx))
	} else if err != nil {
		return "", fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Proc is a host process.
type Proc struct {
	Pid  int
	Args []string
}

// AllProcs lists the host's processes (but this one) with a command line.
func AllProcs() []Proc {
	var out []Proc
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && len(b) > 0 {
			out = append(out, Proc{Pid: pid, Args: strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")})
		}
	}
	return out
}

// Ours lists the processes, other than containerd itself, that belong to
// this containerd: their command line names its directory (shims get
// -address, VMMs and qemu the shim state root, both under it), or they sit in
// a cgroup of its namespace (runc's containers).
func (e *Env) Ours() []Proc {
	var out []Proc
	for _, p := range AllProcs() {
		if p.Pid == e.Pid() {
			continue
		}
		cl := strings.Join(p.Args, " ")
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.Pid))
		if strings.Contains(cl, e.Dir+"/") || strings.Contains(string(cg), "/"+e.NS+"/") {
			out = append(out, p)
		}
	}
	return out
}

// Mounts lists the mount points under the directory, deepest first.
func (e *Env) Mounts() []string {
	var mps []string
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], e.Dir+"/") {
			mps = append(mps, strings.ReplaceAll(f[4], `\040`, " "))
		}
	}
	sort.Slice(mps, func(a, b int) bool { return len(mps[a]) > len(mps[b]) })
	return mps
}

// Cleanup deletes tasks and containers, stops containerd, kills what is
// left of ours (shims, VMMs, qemu, runc containers), unmounts and removes
// the directory, runc's state and the namespace's cgroups.
func (e *Env) Cleanup() {
	if e == nil {
		return
	}
	bg := context.Background()
	if e.cmd != nil {
		tasks, _ := e.CtrRun(bg, "task", "ls", "-q")
		for _, id := range strings.Fields(tasks) {
			_, _ = e.CtrRun(bg, "task", "delete", "--force", id)
		}
		if ids, _ := e.CtrRun(bg, "container", "ls", "-q"); len(strings.Fields(ids)) > 0 {
			_, _ = e.CtrRun(bg, append([]string{"container", "delete"}, strings.Fields(ids)...)...)
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
		left := e.Ours()
		if len(left) == 0 {
			break
		}
		if i >= 50 {
			for _, p := range left {
				_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, mp := range e.Mounts() {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
	}
	_ = os.RemoveAll(filepath.Join("/run/containerd/runc", e.NS))
	cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", e.NS)) // v1: one per controller
	for _, d := range append(cgroups, filepath.Join("/sys/fs/cgroup", e.NS)) {
		removeCgroup(d)
	}
	if err := os.RemoveAll(e.Dir); err != nil {
		fmt.Fprintf(os.Stderr, "%s: cleanup: %v\n", e.Name, err)
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

// LookPath finds name on path, as containerd and its shims will.
func LookPath(path, name string) string {
	for _, d := range filepath.SplitList(path) {
		if st, err := os.Stat(filepath.Join(d, name)); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return filepath.Join(d, name)
		}
	}
	return ""
}

// Median of sorted s.
func Median(s []float64) float64 { return (s[(len(s)-1)/2] + s[len(s)/2]) / 2 }

// Quantile q (0..1] of sorted s, nearest rank.
func Quantile(s []float64, q float64) float64 {
	return s[max(0, min(int(math.Ceil(q*float64(len(s))))-1, len(s)-1))]
}
