package vmmproc

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/kvmprobe"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
	"github.com/msb-dev/msb/vmmproc/qemujail"
)

// qemu supervises qemu-system-x86_64 -M microvm.
type qemu struct {
	mu     sync.Mutex
	cmd    *exec.Cmd
	killed bool
	// autoKVM: KVM was picked because the host's probe passed; givenUp: KVM was
	// abandoned for this VM and qemu runs (or is about to run) under TCG.
	autoKVM, givenUp bool
	// taps are the NICs' tap fds, handed to every qemu started.
	taps []*os.File
	// What every qemu started gets: bin is qemu's path, tsc the host's
	// clock rate.
	cfg           *vmm.LaunchConfig
	bin, chanSock string
	tsc           int
	// userns is the user namespace qemu runs in, ids its host ids (nil:
	// root of the host's, unjailed or JailHostRoot); hostIDs: userns maps
	// the host's ids to themselves (qemujail.UserNS).
	userns  *os.File
	ids     *jail.IDs
	hostIDs bool
	// mirrors keep the running qemu's propagated shares in step with the
	// host's mounts (qemujail.StartMirrors).
	mirrors []*mounts.Mirror
	// exited is closed once the running qemu was waited for.
	exited chan struct{}
	done   chan struct{}
	err    error
	// out is qemu's stdout and stderr: the capped qemu.log (qemulog.go).
	out *os.File
	// mon is the running qemu's QMP connection.
	mon *monitor
	// tmpl holds a template's memory and state files (template.go).
	tmpl templateFiles
}

// tcgTBSizeMiB is TCG's translation cache. qemu's default, 1 GiB, shows up
// in its RSS as far as the guest's code fills it; a boot and an idle
// container fill 75-82 MiB of a 128 MiB cache. 64 MiB boots as fast (a
// full cache is flushed and refilled) and saves 18 MiB of RSS; 32 MiB
// slowed the boot by about a second (bench/RESULTS.md, 2026-12-01).
const tcgTBSizeMiB = 64

// qemuArgs builds the command line. Values from bundles (paths) are escaped
// for QEMU's option grammar, where ',' separates options.
func qemuArgs(c *vmm.LaunchConfig, chanSock string, kvm bool, tscKHz int, tf templateFDs) []string {
	machine := "microvm"
	if tf.ram > 0 {
		machine += ",memory-backend=ram"
	}
	args := []string{
		"-machine", machine, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-m", strconv.Itoa(c.MemoryCeiling()), "-smp", strconv.Itoa(c.VCPUs),
		"-kernel", c.Kernel,
	}
	args = append(args, templateArgs(c, tf)...)
	cmdline := "console=ttyS0 quiet panic=-1 reboot=t"
	if kvm {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg,tb-size="+strconv.Itoa(tcgTBSizeMiB), "-cpu", "max")
		// TCG timer calibration hangs about one boot in six without this.
		if tscKHz > 0 {
			cmdline += " tsc_early_khz=" + strconv.Itoa(tscKHz)
		}
	}
	if c.RootDisk != "" {
		// The first virtio device, so the guest probes it first: /dev/vda.
		cmdline += " root=/dev/vda ro rootfstype=ext4 init=/init"
		args = append(args, rootDiskArgs(c.RootDisk)...)
	} else if c.Initrd != "" {
		args = append(args, "-initrd", c.Initrd)
	}
	args = append(args, "-append", cmdline,
		"-chardev", "socket,id=console,path="+qemuEscape(vmm.ConsoleSocket(c)),
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,path="+qemuEscape(vmm.MonitorSocket(c)),
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=agent,path="+qemuEscape(chanSock)+agentReconnect(tf),
		"-device", "virtio-serial-device",
		"-device", "virtserialport,chardev=agent,id="+agentPortID+",name="+protocol.PortName,
		// Free page reporting: the guest (CONFIG_PAGE_REPORTING, the
		// balloon built in) hands back free 2 MiB blocks about 2 s after
		// they are freed, and qemu drops them, so memory a container
		// frees returns to the host (issue 24). A template's RAM is a
		// memfd: qemu 7.2 drops its pages by punching holes in it, then
		// madvise; a VM started from a template maps one sealed against
		// the punch, which only the jail's filter (jail.Plan.PrivateRAM)
		// turns into a no-op, so unjailed neither it nor its template
		// (whose device features must match) reports free pages.
		"-device", "virtio-balloon-device,free-page-reporting="+onOff(tf.ram == 0 || !c.NoJail),
	)
	if !c.NoJail {
		args = append(args, "-sandbox", jail.QEMUSandbox)
	}

	for i, s := range c.Shares {
		fs := fmt.Sprintf("local,id=fs%d,path=%s,security_model=none", i, qemuEscape(s.Path))
		if s.ReadOnly {
			fs += ",readonly=on"
		}
		if s.MultiDevs {
			// Distinct 9p qids for files of different host devices.
			fs += ",multidevs=remap"
		}
		args = append(args, "-fsdev", fs,
			"-device", fmt.Sprintf("virtio-9p-device,fsdev=fs%d,mount_tag=%s", i, s.Tag))
	}
	if c.Modules != "" {
		// Read-only and the same for every VM: the kernel's module tree.
		args = append(args, "-fsdev", "local,id=fsmod,path="+qemuEscape(c.Modules)+",security_model=none,readonly=on",
			"-device", "virtio-9p-device,fsdev=fsmod,mount_tag="+protocol.ModulesShareTag)
	}
	for i, n := range c.NICs {
		// The taps are the qemu process's fds 3, 4, … (qemu.taps).
		args = append(args, "-netdev", fmt.Sprintf("tap,id=net%d,fd=%d", i, 3+i),
			"-device", fmt.Sprintf("virtio-net-device,netdev=net%d,mac=%s", i, n.MAC))
	}
	for i, d := range c.Disks {
		args = append(args, diskArgs(i, d)...)
	}
	return args
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// hostTSCKHz reads the host's clock rate for tsc_early_khz; 0 if unknown.
func hostTSCKHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}

// kvmFallbackWindow: a KVM qemu that dies this soon after start failed to
// set up the VM (e.g. nested KVM refusing MSRs), not a guest that ran.
const kvmFallbackWindow = 5 * time.Second

func startQEMU(c *vmm.LaunchConfig, chanSock string, mon *monitor, tmpl templateFiles, logf, out *os.File, taps []*os.File) (*qemu, error) {
	bin := c.QEMU
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	if p, err := exec.LookPath(bin); err == nil {
		bin = p
	}
	autoKVM := false
	if c.Accel == "" {
		var why string
		autoKVM, why = kvmprobe.Usable(bin, c.Kernel)
		if !autoKVM {
			fmt.Fprintf(logf, "msb-vmm: KVM not usable on this host (%s): running under TCG\n", why)
		}
	}
	kvm := c.Accel == "kvm" || autoKVM
	q := &qemu{done: make(chan struct{}), autoKVM: autoKVM, taps: taps, cfg: c, bin: bin, chanSock: chanSock, tsc: hostTSCKHz(), out: out, mon: mon, tmpl: tmpl}
	if !c.NoJail && !c.JailHostRoot {
		// qemu's own user: a range of host ids held while it may run, and
		// the user namespace that maps it (ADR 022).
		ids := jail.HeldIDs(c.JailIDBase) // held by the creator
		var err error
		if c.JailIDBase == 0 {
			if ids, err = jail.AllocIDs(c.RuntimeDir); err != nil {
				return nil, err
			}
		}
		if q.userns, q.hostIDs, err = qemujail.UserNS(c, ids.Base(), chanSock, logf); err != nil {
			ids.Release()
			return nil, err
		}
		q.ids = ids
	}
	if err := q.launch(kvm, logf); err != nil {
		q.releaseIDs()
		return nil, err
	}
	go func() {
		defer q.releaseIDs()
		start := time.Now()
		err := q.wait()
		// /dev/kvm can open and still not run a guest (broken nesting):
		// with accel left to us, fall back to TCG instead of failing —
		// when KVM qemu dies at once, or when the VMM gave up on its boot.
		q.mu.Lock()
		retry := autoKVM && !q.killed && (q.givenUp || (err != nil && time.Since(start) < kvmFallbackWindow))
		q.givenUp = retry
		q.mu.Unlock()
		if retry {
			kvmprobe.RecordBroken(bin, c.Kernel, fmt.Sprintf("a guest under KVM failed to boot (%v)", err))
			fmt.Fprintf(logf, "msb-vmm: qemu with KVM failed (%v): falling back to TCG\n", err)
			if lerr := q.launch(false, logf); lerr == nil {
				err = q.wait()
			}
		}
		q.err = err
		close(q.done)
	}()
	return q, nil
}

// GiveUpKVM kills a qemu that KVM was picked for automatically and whose
// guest did not come up in time (nested KVM can hang instead of failing);
// it restarts under TCG. It reports whether it did.
func (q *qemu) GiveUpKVM() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.autoKVM || q.givenUp || q.killed {
		return false
	}
	q.givenUp = true
	_ = q.cmd.Process.Kill()
	return true
}

func (q *qemu) launch(kvm bool, logf *os.File) error {
	fds, tf := q.tmpl.fds(q.taps)
	args := qemuArgs(q.cfg, q.chanSock, kvm, q.tsc, tf)
	cmd := exec.Command(q.bin, args...)
	cmd.ExtraFiles = fds
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	how := ""
	var built, builtW *os.File // the jail's built pipe, with shares to mirror
	shares := qemujail.MirroredShares(q.cfg, q.userns, q.hostIDs)
	if !q.cfg.NoJail {
		if len(shares) > 0 {
			var err error
			if built, builtW, err = os.Pipe(); err != nil {
				return fmt.Errorf("jail: %w", err)
			}
			defer built.Close()
			defer builtW.Close()
		}
		plan, err := qemujail.Plan(q.cfg, q.bin, q.chanSock, kvm, args)
		if err != nil {
			return err
		}
		var planf *os.File
		plan.Env = []string{}
		// qemu must not outlive the VMM process, however that ends.
		plan.Pdeathsig = int(syscall.SIGKILL)
		plan.HostIDs = q.hostIDs
		if cmd, planf, err = jail.Command(plan, fds, q.userns, builtW); err != nil {
			return err
		}
		defer planf.Close()
		user := "root"
		switch {
		case q.hostIDs:
			user = fmt.Sprintf("host uid %d (in a user namespace that maps the host's ids)", q.ids.Base())
		case q.ids != nil:
			user = fmt.Sprintf("host uid %d (root of its user namespace)", q.ids.Base())
		}
		how = fmt.Sprintf(" jailed (%d paths, as %s, capabilities %s)", len(plan.Binds), user, qemujail.CapList(plan.Caps))
	}
	cmd.Stdout, cmd.Stderr = q.out, q.out
	// If the VMM process dies without cleaning up, qemu must not outlive it.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	fmt.Fprintf(logf, "msb-vmm: starting%s %s %s\n", how, q.bin, strings.Join(args, " "))
	exited := make(chan struct{})
	q.mon.accept()
	if err := startPinned(cmd, exited); err != nil {
		return fmt.Errorf("start %s: %w (install qemu-system-x86 or set qemu in /etc/msb/config.toml)", q.bin, err)
	}
	var mirrors []*mounts.Mirror
	if built != nil {
		builtW.Close() // the helper's copy alone is left
		var err error
		if mirrors, err = qemujail.StartMirrors(cmd.Process.Pid, built, shares, q.userns, logf); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			close(exited)
			return err
		}
	}
	q.mu.Lock()
	q.cmd, q.exited = cmd, exited
	q.mirrors = mirrors
	killed := q.killed
	q.mu.Unlock()
	if killed { // Kill raced with a TCG fallback: the new qemu must not survive it
		_ = cmd.Process.Kill()
	}
	return nil
}

// releaseIDs gives back qemu's user namespace and ids once it is gone.
func (q *qemu) releaseIDs() {
	if q.userns != nil {
		q.userns.Close()
	}
	q.ids.Release()
}

// wait waits for the running qemu to end, then stops its mirrors.
func (q *qemu) wait() error {
	q.mu.Lock()
	cmd, exited := q.cmd, q.exited
	q.mu.Unlock()
	err := cmd.Wait()
	close(exited)
	q.mu.Lock()
	mirrors := q.mirrors
	q.mirrors = nil
	q.mu.Unlock()
	qemujail.StopMirrors(mirrors)
	return err
}

// startPinned starts cmd from an OS thread that nothing else runs on
// until exited is closed. The child's parent-death signal (SIGKILL, and
// the jailed qemu's, which the helper sets again) is sent when the thread
// that forked it ends, and the Go runtime ends a thread whose locked
// goroutine returns: the mirrors' mount-namespace work does so
// (mounts.InMountNS), and could otherwise run on that thread and take
// qemu with it.
func startPinned(cmd *exec.Cmd, exited <-chan struct{}) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with qemu
		err := cmd.Start()
		errc <- err
		if err == nil {
			<-exited
		}
	}()
	return <-errc
}

func (q *qemu) Done() <-chan struct{} { return q.done }

func (q *qemu) Kill() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.killed = true
	_ = q.cmd.Process.Kill()
}

// pid is the running hypervisor's pid (0 before it started).
func (q *qemu) pid() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cmd == nil || q.cmd.Process == nil {
		return 0
	}
	return q.cmd.Process.Pid
}
