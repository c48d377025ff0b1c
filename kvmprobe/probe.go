// Package kvmprobe says whether this host runs guests under KVM: its device
// opens read-write (Check), and a guest kernel boots under it (Usable, a
// probe cached per host boot).
package kvmprobe

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Device is the device both backends need for hardware virtualization.
// A variable so tests can point it at something that does not open.
var Device = "/dev/kvm"

// Check opens the KVM device read-write, which is what a hypervisor
// needs; existence alone is not enough (permissions, nesting).
func Check() error {
	f, err := os.OpenFile(Device, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// A /dev/kvm that opens read-write can still be unable to run a guest:
// nested KVM here aborts qemu ("failed to set MSR") or hangs it before the
// kernel prints a line. The probe boots the guest kernel under KVM once per
// host boot and caches the verdict, so no VM start pays for a failed KVM
// attempt, and install.sh can tell the truth.

// kvmProbeDir holds one verdict file per qemu binary and kernel, each
// naming the host boot it is valid for; a variable so tests can move it.
var kvmProbeDir = "/run/msb/kvm-probe"

// kvmProbeTimeout bounds the probe boot (a variable for tests): under working KVM the kernel's
// banner comes within milliseconds.
var kvmProbeTimeout = 5 * time.Second

// kvmBanner is what the kernel prints first on its early console.
var kvmBanner = []byte("Linux version")

// Usable reports whether qemu runs guests under KVM on this host boot,
// and why not. The first caller per boot probes (booting kernel until it
// prints its banner) and caches the answer; concurrent callers wait for it.
func Usable(qemuBin, kernel string) (bool, string) {
	if err := Check(); err != nil {
		return false, fmt.Sprintf("%s: %v", Device, err)
	}
	if kernel == "" {
		return false, "no guest kernel configured to probe KVM with"
	}
	if _, err := os.Stat(kernel); err != nil {
		// Not a verdict on KVM: nothing is cached (install.sh asks before
		// it has built the image).
		return false, fmt.Sprintf("guest kernel: %v", err)
	}
	if p, err := exec.LookPath(qemuBin); err == nil {
		qemuBin = p // one verdict however the binary is named
	}
	v := newKVMVerdict(qemuBin, kernel)
	if ok, why, found := v.read(); found {
		return ok, why
	}
	if err := os.MkdirAll(kvmProbeDir, 0o700); err != nil {
		return probeKVM(qemuBin, kernel) // uncached, still right
	}
	lock, err := os.OpenFile(v.path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		defer lock.Close()
		_ = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
		if ok, why, found := v.read(); found {
			return ok, why // another process probed while we waited
		}
	}
	ok, why := probeKVM(qemuBin, kernel)
	v.write(ok, why)
	return ok, why
}

// RecordBroken caches that KVM failed a real boot, so later starts on
// this host boot go straight to TCG even if the probe passed.
func RecordBroken(qemuBin, kernel, why string) {
	if p, err := exec.LookPath(qemuBin); err == nil {
		qemuBin = p
	}
	newKVMVerdict(qemuBin, kernel).write(false, why)
}

func probeKVM(qemuBin, kernel string) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), kvmProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemuBin,
		"-machine", "microvm", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-m", "64", "-accel", "kvm", "-cpu", "host", "-kernel", kernel,
		"-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1 reboot=t", "-serial", "stdio")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false, err.Error()
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return false, fmt.Sprintf("start %s: %v", qemuBin, err)
	}
	seen := scanFor(out, kvmBanner)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	switch {
	case seen:
		return true, "kvm"
	case ctx.Err() != nil:
		return false, fmt.Sprintf("a KVM guest printed nothing in %s (broken nested virtualization)", kvmProbeTimeout)
	default:
		return false, fmt.Sprintf("qemu under KVM failed: %s", strings.TrimSpace(lastLine(stderr.String())))
	}
}

// scanFor reads r until want appears (true) or r ends (false).
func scanFor(r io.Reader, want []byte) bool {
	var buf []byte
	chunk := make([]byte, 4096)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if bytes.Contains(buf, want) {
			return true
		}
		if len(buf) > len(want) { // keep only what a match could span
			buf = buf[len(buf)-len(want):]
		}
		if err != nil {
			return false
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// kvmVerdict is one cached probe result: the file is
// "<boot id> <qemu> <kernel> <kernel file identity>\n<ok|broken>\n<why>\n".
type kvmVerdict struct{ path, key string }

func newKVMVerdict(qemuBin, kernel string) kvmVerdict {
	key := fmt.Sprintf("%s %s %s %s", bootID(), qemuBin, kernel, fileIdentity(kernel))
	sum := sha256.Sum256([]byte(qemuBin + "\x00" + kernel))
	return kvmVerdict{path: filepath.Join(kvmProbeDir, hex.EncodeToString(sum[:8])), key: key}
}

// fileIdentity names a file's current version (device, inode, size,
// modification time): a kernel replaced at the same path, as an image
// rebuild does, gets a verdict of its own.
func fileIdentity(p string) string {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d:%d:%d:%d", st.Dev, st.Ino, st.Size, st.Mtim.Nano())
}

func (v kvmVerdict) read() (ok bool, why string, found bool) {
	b, err := os.ReadFile(v.path)
	if err != nil {
		return false, "", false
	}
	f := strings.SplitN(string(b), "\n", 3)
	if len(f) < 3 || f[0] != v.key || (f[1] != "ok" && f[1] != "broken") {
		return false, "", false // another boot's, or torn
	}
	return f[1] == "ok", strings.TrimSpace(f[2]), true
}

func (v kvmVerdict) write(ok bool, why string) {
	verdict := "broken"
	if ok {
		verdict = "ok"
	}
	if err := os.MkdirAll(kvmProbeDir, 0o700); err != nil {
		return
	}
	tmp, err := os.CreateTemp(kvmProbeDir, ".verdict-*")
	if err != nil {
		return
	}
	_, werr := fmt.Fprintf(tmp, "%s\n%s\n%s\n", v.key, verdict, why)
	if errors.Join(werr, tmp.Close()) != nil || os.Rename(tmp.Name(), v.path) != nil {
		_ = os.Remove(tmp.Name())
	}
}
