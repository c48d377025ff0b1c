// Package phases benchmarks msb-runtime run against runc on one busybox
// bundle, in the same run: the median of each start phase over N runs
// (spawn → startup line → agent ready → first output → exit), the host RSS
// of the VMM process and of qemu, and the ratio of total time to runc's.
// bench/phases runs it alone, bench/ctrrun after its ctr runs.
package phases

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/msb-dev/msb/ociruntime"
	"github.com/msb-dev/msb/vmm"
)

// Run runs the benchmark n times per runtime and prints its tables; msb
// is msb-runtime, runc the baseline runc.
func Run(n int, msb, runc string) error {
	tmp, err := os.MkdirTemp("/tmp", "msbb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b, err := makeBundle(tmp, []string{"echo", "hello"})
	if err != nil {
		return err
	}
	timings := filepath.Join(tmp, "timings.jsonl")
	var msbTotal, runcTotal []float64
	for i := 0; i < n; i++ {
		start := time.Now()
		cmd := exec.Command(msb, "--root", filepath.Join(tmp, "state"), "run", "--bundle", b, fmt.Sprintf("b%d", i))
		cmd.Env = append(os.Environ(), "MSB_TIMINGS="+timings)
		if out, err := cmd.CombinedOutput(); err != nil || !bytes.Contains(out, []byte("hello")) {
			return fmt.Errorf("msb-runtime run: %v: %s", err, out)
		}
		msbTotal = append(msbTotal, ms(time.Since(start)))

		start = time.Now()
		rc := exec.Command(runc, "--root", filepath.Join(tmp, "runc"), "run", "--bundle", b, fmt.Sprintf("r%d", i))
		if out, err := rc.CombinedOutput(); err != nil || !bytes.Contains(out, []byte("hello")) {
			return fmt.Errorf("runc run: %v: %s", err, out)
		}
		runcTotal = append(runcTotal, ms(time.Since(start)))
	}
	phases, err := readPhases(timings)
	if err != nil {
		return err
	}
	fmt.Printf("msb-runtime run vs runc run, busybox `echo hello`, %d runs each, medians (ms since the run began)\n", n)
	for _, p := range []string{"spawn", "startup", "ready", "first-output", "exit"} {
		fmt.Printf("  %-13s %8.1f\n", p, median(phases[p]))
	}
	mt, rt := median(msbTotal), median(runcTotal)
	fmt.Printf("  total (msb)   %8.1f\n  total (runc)  %8.1f\n  ratio msb/runc %7.1fx\n", mt, rt, mt/rt)

	vmmRSS, qemuRSS, err := measureRSS(msb, b, tmp)
	if err != nil {
		return err
	}
	fmt.Printf("host RSS while a container runs: VMM process %.1f MiB, qemu %.1f MiB (VM memory %s)\n",
		vmmRSS, qemuRSS, "256 MiB configured")
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func readPhases(path string) (map[string][]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("timings (MSB_TIMINGS): %w", err)
	}
	defer f.Close()
	out := map[string][]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]float64
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, err
		}
		for k, v := range m {
			out[k] = append(out[k], v)
		}
	}
	return out, sc.Err()
}

// measureRSS runs a sleeping container and reads VmRSS of the VMM process
// and qemu (found by the state dir in their command lines).
func measureRSS(msb, bundle, tmp string) (vmmMiB, qemuMiB float64, err error) {
	spec := filepath.Join(bundle, "config.json")
	orig, _ := os.ReadFile(spec)
	defer os.WriteFile(spec, orig, 0o644)
	var s map[string]any
	_ = json.Unmarshal(orig, &s)
	s["process"].(map[string]any)["args"] = []string{"sh", "-c", "echo ready; sleep 5"}
	nb, _ := json.Marshal(s)
	if err := os.WriteFile(spec, nb, 0o644); err != nil {
		return 0, 0, err
	}
	root := filepath.Join(tmp, "state")
	cmd := exec.Command(msb, "--root", root, "run", "--bundle", bundle, "rss")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer cmd.Wait()
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "ready\n" {
		return 0, 0, fmt.Errorf("rss container: %q %v", l, err)
	}
	// The VMM names its state dir on its argv; qemu is its child.
	state := vmm.StateDirPath(root, "rss")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	vmmPid := ""
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if args := strings.Split(string(b), "\x00"); len(args) >= 3 && args[1] == "vmm" && args[2] == state {
			vmmPid = filepath.Base(filepath.Dir(p))
			vmmMiB = rssMiB(filepath.Join(filepath.Dir(p), "status"))
		}
	}
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		st, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
		if vmmPid != "" && len(f) > 1 && f[1] == vmmPid && bytes.Contains(b, []byte("qemu")) {
			qemuMiB += rssMiB(filepath.Join(filepath.Dir(p), "status"))
		}
	}
	return vmmMiB, qemuMiB, nil
}

func rssMiB(status string) float64 {
	b, _ := os.ReadFile(status)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func makeBundle(dir string, args []string) (string, error) {
	b := filepath.Join(dir, "bundle")
	root := filepath.Join(b, "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("busybox-static: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		return "", err
	}
	for _, a := range []string{"sh", "echo", "sleep"} {
		_ = os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	spec := ociruntime.DefaultSpec()
	spec.Process.Args = args
	js, _ := json.MarshalIndent(spec, "", " ")
	return b, os.WriteFile(filepath.Join(b, "config.json"), js, 0o644)
}
