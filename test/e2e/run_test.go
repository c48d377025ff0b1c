package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestEchoAndExitCode(t *testing.T) {
	requireVM(t)
	r := run(t, bundle(t, []string{"sh", "-c", "echo hello from the guest; uname -r; exit 42"}, nil), "")
	if r.code != 42 {
		t.Fatalf("exit code %d, want 42; stderr: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || lines[0] != "hello from the guest" {
		t.Fatalf("stdout %q", r.stdout)
	}
	host, _ := exec.Command("uname", "-r").Output()
	guestImage, _ := os.ReadFile(filepath.Join(envOr("MSB_TEST_IMAGE", "/var/lib/msb"), "kernel.release"))
	if g := strings.TrimSpace(string(guestImage)); g != "" && lines[1] != g {
		t.Fatalf("container saw kernel %q, the guest image is %q (host %q)", lines[1], g, strings.TrimSpace(string(host)))
	}
}

func TestStdinThroughCat(t *testing.T) {
	requireVM(t)
	in := strings.Repeat("line of stdin\n", 5000)
	r := run(t, bundle(t, []string{"cat"}, nil), in)
	if r.code != 0 || r.stdout != in {
		t.Fatalf("exit %d, got %d bytes of %d; stderr: %s", r.code, len(r.stdout), len(in), r.stderr)
	}
}

func TestProcessSettings(t *testing.T) {
	requireVM(t)
	b := bundle(t, []string{"sh", "-c", `echo "foo=$FOO"; pwd; id -u; id -g; hostname; ulimit -n`}, func(s *specs.Spec) {
		s.Process.Env = append(s.Process.Env, "FOO=bar baz")
		s.Process.Cwd = "/work"
		s.Process.User = specs.User{UID: 1000, GID: 1000}
		s.Hostname = "msb-e2e"
		s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 321, Hard: 654}}
	})
	r := run(t, b, "")
	want := "foo=bar baz\n/work\n1000\n1000\nmsb-e2e\n321\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("exit %d stdout %q, want %q; stderr: %s", r.code, r.stdout, want, r.stderr)
	}
}

func TestMounts(t *testing.T) {
	requireVM(t)
	rw, ro := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "ro.txt"), []byte("read only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	single := filepath.Join(t.TempDir(), "single.conf")
	if err := os.WriteFile(single, []byte("one file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An ext4 image made from a directory, mounted at /data.
	content := t.TempDir()
	if err := os.WriteFile(filepath.Join(content, "hello"), []byte("from the disk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", content, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	script := `set -e
echo written-in-guest > /rw/out.txt
if echo x > /ro/nope 2>/dev/null; then echo "ro-writable"; else echo "ro-refused"; fi
cat /ro/ro.txt
cat /etc/single.conf
df -k /scratch | awk 'NR==2 {print "scratch-kb", $2}'
cat /data/hello
`
	b := bundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: "/rw", Type: "bind", Source: rw, Options: []string{"rbind", "rw"}},
			specs.Mount{Destination: "/ro", Type: "bind", Source: ro, Options: []string{"rbind", "ro"}},
			specs.Mount{Destination: "/etc/single.conf", Type: "bind", Source: single, Options: []string{"bind", "ro"}},
			specs.Mount{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs", Options: []string{"size=8m", "mode=1777"}},
			specs.Mount{Destination: "/data", Type: "ext4", Source: img, Options: []string{"rw"}},
		)
	})
	r := run(t, b, "")
	want := "ro-refused\nread only\none file\nscratch-kb 8192\nfrom the disk\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("exit %d stdout %q, want %q; stderr: %s", r.code, r.stdout, want, r.stderr)
	}
	got, err := os.ReadFile(filepath.Join(rw, "out.txt"))
	if err != nil || string(got) != "written-in-guest\n" {
		t.Fatalf("rw bind write not visible on the host: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(ro, "nope")); err == nil {
		t.Fatal("write through the ro bind reached the host")
	}
}

// TestLargeOutput checks that 64 MiB of stdout arrive intact and in order,
// and that stderr stays separate: the guest prints the checksum to stderr.
func TestLargeOutput(t *testing.T) {
	requireVM(t)
	script := `dd if=/dev/urandom of=/scratch/blob bs=1048576 count=64 2>/dev/null
sha256sum /scratch/blob | awk '{print $1}' >&2
cat /scratch/blob`
	b := bundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs", Options: []string{"size=80m"}})
		// 384 MiB: the limit plus overhead_mib, the most the annotation may ask.
		limit := int64(256 << 20)
		s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
		s.Annotations = map[string]string{"io.msb.memory-mib": "384"}
	})
	r := run(t, b, "")
	sum := sha256.Sum256([]byte(r.stdout))
	if r.code != 0 || len(r.stdout) != 64<<20 || strings.TrimSpace(r.stderr) != hex.EncodeToString(sum[:]) {
		t.Fatalf("exit %d, %d bytes, sha256 %x, guest said %q", r.code, len(r.stdout), sum, r.stderr)
	}
}

// TestKillRuntimeLeavesNothing SIGKILLs msb-runtime mid-run: the VMM's
// parent watchdog must stop the VM and remove every trace.
func TestKillRuntimeLeavesNothing(t *testing.T) {
	requireVM(t)
	root := stateRoot(t)
	cmd := runtimeCmd(root, "run", "--bundle", bundle(t, []string{"sh", "-c", "echo ready; exec sleep 1000"}, nil), "victim")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		_ = cmd.Process.Kill()
		t.Fatalf("first line %q: %v", line, err)
	}
	if len(leftovers(root)) == 0 {
		t.Fatal("a running VM shows no state: the leak check below would be blind")
	}
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
	start := time.Now()
	assertNothingLeft(t, root)
	t.Logf("VM and state gone %s after SIGKILL", time.Since(start).Round(time.Millisecond))
}

func TestMalformedConfig(t *testing.T) {
	requireVM(t)
	root := stateRoot(t)
	for name, body := range map[string]string{
		"syntax":  "{\n \"ociVersion\": \"1.0.2\",\n \"process\": {\n",
		"type":    `{"ociVersion":"1.0.2","process":{"args":"sh"},"root":{"path":"rootfs"}}`,
		"no-args": `{"ociVersion":"1.0.2","process":{"args":[]},"root":{"path":"rootfs"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			b := bundle(t, []string{"true"}, nil)
			if err := os.WriteFile(filepath.Join(b, "config.json"), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := runtimeCmd(root, "run", "--bundle", b, "bad").CombinedOutput()
			if err == nil {
				t.Fatal("a malformed config.json ran")
			}
			msg := string(out)
			if !strings.Contains(msg, "config.json") || !(strings.Contains(msg, "line") || strings.Contains(msg, "process.args")) {
				t.Fatalf("error does not name the file and the place: %s", msg)
			}
			assertNothingLeft(t, root)
		})
	}
}

// TestHandoffInit hands the VM's PID 1 to an init from the rootfs (here the
// bundle's own sh, via io.msb.handoff-init) while the container still runs
// under runc: the copy that sees the guest's kernel threads is the VM's
// init and reports its pid through the shared rootfs.
func TestHandoffInit(t *testing.T) {
	requireVM(t)
	script := `if grep -q kthreadd /proc/2/comm 2>/dev/null; then echo "handoff init is pid $$" > /tmp/handoff; exec sleep 100000; fi
i=0; while [ ! -s /tmp/handoff ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
cat /tmp/handoff`
	b := bundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Annotations = map[string]string{"io.msb.handoff-init": "/bin/sh"}
	})
	r := run(t, b, "")
	if r.code != 0 || r.stdout != "handoff init is pid 1\n" {
		t.Fatalf("exit %d stdout %q; stderr: %s", r.code, r.stdout, r.stderr)
	}
}

// TestSignalForwarding: like runc run, msb-runtime run passes the signals
// it gets on to the container's process.
func TestSignalForwarding(t *testing.T) {
	requireVM(t)
	root := stateRoot(t)
	script := `trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done`
	cmd := runtimeCmd(root, "run", "--bundle", bundle(t, []string{"sh", "-c", script}, nil), "sig")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(out)
	if line, err := rd.ReadString('\n'); err != nil || line != "ready\n" {
		_ = cmd.Process.Kill()
		t.Fatalf("first line %q: %v", line, err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	rest, _ := io.ReadAll(rd)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 || string(rest) != "got-term\n" {
		t.Fatalf("after SIGTERM: %v, output %q; want exit 7 and got-term", err, rest)
	}
	assertNothingLeft(t, root)
}

// TestRefusedSpec: what cannot run in a VM is refused before anything is
// started, with the field named, and leaves nothing behind.
func TestRefusedSpec(t *testing.T) {
	requireVM(t)
	root := stateRoot(t)
	for name, c := range map[string]struct {
		mut  func(*specs.Spec)
		want string
	}{
		"host-network": {func(s *specs.Spec) {
			var keep []specs.LinuxNamespace
			for _, ns := range s.Linux.Namespaces {
				if ns.Type != specs.NetworkNamespace {
					keep = append(keep, ns)
				}
			}
			s.Linux.Namespaces = keep
		}, "network"},
		"device-node": {func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/dev/kmsg", Type: "bind", Source: "/dev/kmsg", Options: []string{"bind"}})
		}, "mounts["},
		"bad-annotation": {func(s *specs.Spec) {
			s.Annotations = map[string]string{"io.msb.vcpus": "many"}
		}, "io.msb.vcpus"},
		"memory-past-host": {func(s *specs.Spec) {
			limit := int64(99999999 << 20)
			s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
		}, "over max_memory_mib"},
		"memory-annotation-past-limit": {func(s *specs.Spec) {
			s.Annotations = map[string]string{"io.msb.memory-mib": "512"}
		}, "over its bound of 256 MiB"},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := runtimeCmd(root, "run", "--bundle", bundle(t, []string{"true"}, c.mut), "refused").CombinedOutput()
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Fatalf("err %v, output %q; want an error naming %q", err, out, c.want)
			}
			assertNothingLeft(t, root)
		})
	}
}

// TestKVMBrokenGoesToTCG: nested KVM can hang a guest instead of failing
// (seen on the device machine). msb probes KVM once per host boot with a
// kernel-only boot and caches the verdict, so a host whose KVM hangs runs
// every VM under TCG without a failed attempt first; a guest that hangs
// under KVM although the probe passed is given up after kvm_boot_timeout,
// runs under TCG, and turns the verdict to broken.
func TestKVMBrokenGoesToTCG(t *testing.T) {
	requireVM(t)
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		t.Skip("no usable /dev/kvm: msb never tries KVM here, so there is nothing to fall back from")
	} else {
		f.Close()
	}
	base, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	// A fake qemu: the probe (the boot with earlyprintk) prints the banner
	// when probeOK; any other KVM boot hangs; TCG boots run the real qemu.
	fakeQEMU := func(t *testing.T, probeOK bool) (run func(), calls func() []string) {
		dir := t.TempDir()
		log, wrapper := filepath.Join(dir, "calls"), filepath.Join(dir, "qemu")
		probe := "exec sleep 600"
		if probeOK {
			probe = "echo 'Linux version 6.1'; exec sleep 600"
		}
		script := "#!/bin/sh\necho \"$*\" >> " + log + "\n" +
			"case \"$*\" in *earlyprintk*) " + probe + ";; *'-accel kvm'*) exec sleep 600;; esac\n" +
			"exec qemu-system-x86_64 \"$@\"\n"
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { forgetKVMVerdicts(t, wrapper) })
		var cfg []string
		for _, l := range strings.Split(string(base), "\n") {
			if !strings.HasPrefix(l, "accel") && !strings.HasPrefix(l, "qemu") {
				cfg = append(cfg, l)
			}
		}
		// A shell script cannot run in qemu's jail (it holds qemu's own
		// files only): this test is about the fallback, not the jail.
		cfg = append(cfg, `qemu = "`+wrapper+`"`, `kvm_boot_timeout = "2s"`, `jail = false`)
		cfgFile := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(cfgFile, []byte(strings.Join(cfg, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		root := stateRoot(t)
		run = func() {
			cmd := runtimeCmd(root, "run", "--bundle", bundle(t, []string{"echo", "booted"}, nil), "kvmhang")
			cmd.Env = append(cmd.Env, "MSB_CONFIG="+cfgFile)
			if out, err := cmd.CombinedOutput(); err != nil || string(out) != "booted\n" {
				t.Fatalf("run: %v: %s", err, out)
			}
			assertNothingLeft(t, root)
		}
		calls = func() []string {
			got, _ := os.ReadFile(log)
			var accel []string
			for _, l := range strings.Split(strings.TrimSpace(string(got)), "\n") {
				switch {
				case strings.Contains(l, "earlyprintk"):
					accel = append(accel, "probe")
				case strings.Contains(l, "-accel kvm"):
					accel = append(accel, "kvm")
				case strings.Contains(l, "-accel tcg"):
					accel = append(accel, "tcg")
				}
			}
			return accel
		}
		return run, calls
	}
	t.Run("probe fails", func(t *testing.T) {
		run, calls := fakeQEMU(t, false)
		run()
		run()
		if got := strings.Join(calls(), " "); got != "probe tcg tcg" {
			t.Fatalf("qemu runs: %s; want one probe per boot, then TCG only", got)
		}
	})
	t.Run("probe passes, guest hangs", func(t *testing.T) {
		run, calls := fakeQEMU(t, true)
		run()
		run()
		if got := strings.Join(calls(), " "); got != "probe kvm tcg tcg" {
			t.Fatalf("qemu runs: %s; want the probe, a KVM boot given up for TCG, then TCG only", got)
		}
	})
}

// forgetKVMVerdicts removes the cached KVM verdicts a test's fake qemu left.
func forgetKVMVerdicts(t *testing.T, qemu string) {
	ents, _ := os.ReadDir(kvmProbeDir)
	for _, e := range ents {
		p := filepath.Join(kvmProbeDir, e.Name())
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), " "+qemu+" ") {
			_ = os.Remove(p)
			_ = os.Remove(p + ".lock")
		}
	}
}

// kvmProbeDir is where msb caches its KVM verdicts (kvmprobe.Usable).
const kvmProbeDir = "/run/msb/kvm-probe"

// rro (what containerd's CRI asks for a recursive read-only volume) makes
// the whole bind read-only, a filesystem mounted below its source on the
// host included; a plain rw bind of the same tree stays writable.
func TestRecursiveReadOnlyBind(t *testing.T) {
	requireVM(t)
	src := t.TempDir()
	sub := filepath.Join(src, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(sub, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(sub, "inner"), []byte("in the submount\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `for f in /rro/x /rro/sub/y /rw/x /rw/sub/y; do touch $f 2>/dev/null && echo "$f writable" || echo "$f read-only"; done; cat /rro/sub/inner`
	b := bundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: "/rro", Type: "bind", Source: src, Options: []string{"rbind", "rro"}},
			specs.Mount{Destination: "/rw", Type: "bind", Source: src, Options: []string{"rbind", "rw"}})
	})
	r := run(t, b, "")
	want := "/rro/x read-only\n/rro/sub/y read-only\n/rw/x writable\n/rw/sub/y writable\nin the submount\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("exit %d\n%s\nwant:\n%s\nstderr: %s", r.code, r.stdout, want, r.stderr)
	}
}
