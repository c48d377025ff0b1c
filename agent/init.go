package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/agent/modprobe"
)

// Process roles: PID 1 starts the agent proper with RoleEnv=RoleGuest.
const (
	RoleEnv   = "MSBAGENT_ROLE"
	RoleGuest = "guest-agent"
	// noPivotEnv tells the agent that its root is still the initramfs.
	noPivotEnv = "MSBAGENT_NOPIVOT"
	// ChannelEnv selects the channel (kernel command line or env):
	// MSB_CHANNEL=vsock; anything else means the virtio-serial port.
	ChannelEnv = "MSB_CHANNEL"
	// handoffFD is the agent's end of the socket to PID 1.
	handoffFD = 3
	// ModulesList names the modules to load, one per line in dependency
	// order: absolute guest paths, or paths relative to
	// /lib/modules/<release>/.
	ModulesList = "/etc/msb/modules"
	guestPath   = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// prefixFormatter prefixes every log line with "msb-agent: ", so agent lines
// stand out in the guest console log beside the kernel's.
type prefixFormatter struct{ logrus.Formatter }

func (f prefixFormatter) Format(e *logrus.Entry) ([]byte, error) {
	b, err := f.Formatter.Format(e)
	if err != nil {
		return nil, err
	}
	return append([]byte("msb-agent: "), b...), nil
}

// SetupLogging sends the agent's logs (containerd's log package, logrus) to
// stderr at info level with the "msb-agent:" prefix.
func SetupLogging() {
	logrus.SetOutput(os.Stderr)
	logrus.SetLevel(logrus.InfoLevel)
	if os.Getenv("MSB_AGENT_DEBUG") != "" {
		logrus.SetLevel(logrus.DebugLevel)
	}
	logrus.SetFormatter(prefixFormatter{&logrus.TextFormatter{DisableColors: true, FullTimestamp: true, TimestampFormat: "15:04:05.000"}})
}

// initIgnored are the signals PID 1 ignores.
var initIgnored = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPIPE}

// RunInit is main for guest PID 1. It never returns: it powers the VM off
// when the agent dies, or turns into the user's init on a handoff.
func RunInit() {
	// A signal with default action must never kill PID 1 (kernel panic).
	signal.Ignore(initIgnored...)
	rootErr := switchRoot()
	earlyMounts()
	// Neither PID 1 nor the agent (which inherits this) may be the OOM
	// killer's victim: the VM dies with them. Containers get the spec's
	// score (0 by default, Create sees to it), not this one.
	setOOMScoreAdj(oomNever)
	consoleOutput()
	SetupLogging()
	noPivot := rootErr != nil
	if noPivot {
		log.L.WithError(rootErr).Warn("root stays on the initramfs: runc will use --no-pivot")
	}
	_ = os.Setenv("PATH", guestPath)
	if err := modprobe.LoadModules(ModulesList); err != nil {
		log.L.WithError(err).Error("loading kernel modules")
	}
	moduleShare := ninePOptions
	if channelKind() == ChannelVsock {
		// libkrun boots libkrunfw's kernel, whose drivers are built in:
		// the image's module tree is for another kernel.
		moduleShare = ""
	}
	modprobe.Setup(moduleShare)

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fatalInit(fmt.Errorf("socketpair: %w", err))
	}
	mine := os.NewFile(uintptr(fds[0]), "handoff")
	theirs := os.NewFile(uintptr(fds[1]), "handoff-agent")
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"msb-agent"}
	cmd.Env = append(os.Environ(), RoleEnv+"="+RoleGuest)
	if noPivot {
		cmd.Env = append(cmd.Env, noPivotEnv+"=1")
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{theirs}
	if err := cmd.Start(); err != nil {
		fatalInit(fmt.Errorf("start agent: %w", err))
	}
	theirs.Close()
	agentPid := cmd.Process.Pid
	log.L.Infof("agent started (pid %d)", agentPid)

	if c, err := net.FileConn(mine); err == nil {
		mine.Close()
		go serveHandoff(c)
	} else {
		log.L.WithError(err).Error("handoff socket")
	}

	// Reap everything; the agent's death ends the VM.
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			time.Sleep(time.Second)
			continue
		}
		if pid == agentPid {
			log.L.Errorf("agent exited (%s): powering off", describeWait(ws))
			powerOff()
		}
	}
}

func describeWait(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("status %d", ws.ExitStatus())
}

func fatalInit(err error) {
	log.L.WithError(err).Error("init failed: powering off")
	powerOff()
}

func powerOff() {
	unix.Sync()
	time.Sleep(100 * time.Millisecond)
	_ = unix.Reboot(rebootCmd(channelKind()))
	select {}
}

// rebootCmd is how a guest ends its VM: QEMU's microvm powers off through
// ACPI (and -no-reboot makes a reset end it too); libkrun's guests have no
// ACPI power-off, and libkrun ends the VM on a reset (libkrunfw boots with
// reboot=k).
func rebootCmd(channel string) int {
	if channel == ChannelVsock {
		return unix.LINUX_REBOOT_CMD_RESTART
	}
	return unix.LINUX_REBOOT_CMD_POWER_OFF
}

// switchRoot moves the agent off the initramfs root: runc's pivot_root
// fails while the root is the initial rootfs (a mount without a parent). A
// bind mount of / moved onto / and chrooted into is an ordinary mount, so
// pivot_root works in the containers' mount namespaces, without copying.
func switchRoot() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return err
	}
	if st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC {
		return nil // a real root (libkrun's virtio-fs root): nothing to do
	}
	const nr = "/.msb-root"
	if err := os.MkdirAll(nr, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("/", nr, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind / : %w", err)
	}
	if err := unix.Chdir(nr); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

// earlyMounts mounts what a Linux userland and runc expect. Errors are
// logged, not fatal: a missing piece shows up in what needs it.
func earlyMounts() {
	type m struct {
		src, dst, fs string
		flags        uintptr
		data         string
		mode         os.FileMode
	}
	const nsd = unix.MS_NOSUID | unix.MS_NODEV
	for _, x := range []m{
		{"proc", "/proc", "proc", nsd | unix.MS_NOEXEC, "", 0o555},
		{"sysfs", "/sys", "sysfs", nsd | unix.MS_NOEXEC, "", 0o555},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5", 0o755},
		{"shm", "/dev/shm", "tmpfs", nsd, "mode=1777", 0o1777},
		{"tmpfs", "/run", "tmpfs", nsd, "mode=0755", 0o755},
		{"tmpfs", "/tmp", "tmpfs", nsd, "mode=1777", 0o1777},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", nsd | unix.MS_NOEXEC, "", 0o555},
	} {
		if err := os.MkdirAll(x.dst, x.mode); err != nil {
			earlyLog("mkdir %s: %v", x.dst, err)
			continue
		}
		if err := unix.Mount(x.src, x.dst, x.fs, x.flags, x.data); err != nil && !errors.Is(err, unix.EBUSY) {
			earlyLog("mount %s on %s: %v", x.fs, x.dst, err)
		}
	}
	for name, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		_ = os.Symlink(target, name)
	}
	if _, err := os.Lstat("/dev/ptmx"); err != nil {
		_ = os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	enableControllers("/sys/fs/cgroup")
}

// enableControllers turns on every available cgroup v2 controller for the
// root's children, so runc can set limits.
func enableControllers(root string) {
	b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		earlyLog("cgroup controllers: %v", err)
		return
	}
	for _, c := range strings.Fields(string(b)) {
		if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+"+c), 0); err != nil {
			earlyLog("enable cgroup controller %s: %v", c, err)
		}
	}
}

func earlyLog(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "msb-agent: "+format+"\n", args...)
}

// consoleOutput points stdin/stdout/stderr at /dev/console.
func consoleOutput() {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		earlyLog("open /dev/console: %v", err)
		return
	}
	for _, fd := range []int{0, 1, 2} {
		_ = unix.Dup3(int(f.Fd()), fd, 0)
	}
	if f.Fd() > 2 {
		f.Close()
	}
}

// serveHandoff runs in PID 1: one request from the agent, answered "ok"
// right before PID 1 execs the user init, or "error: ...".
func serveHandoff(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req HandoffRequest
		if err := json.Unmarshal(line, &req); err != nil {
			fmt.Fprintf(c, "error: bad handoff request: %v\n", err)
			continue
		}
		errCh := make(chan error, 1)
		go func() {
			// The handoff runs on its own thread, in its own mount
			// namespace (the agent must not see the binds into the new
			// root), and that thread is the one that execs. The thread
			// is never unlocked: if anything fails it dies with this
			// goroutine, namespace and chroot included.
			runtime.LockOSThread()
			if err := prepareHandoff(req); err != nil {
				errCh <- err
				return
			}
			fmt.Fprintf(c, "ok\n")
			log.L.Infof("handing PID 1 to %s (root %s)", req.Init, req.Root)
			err := execHandoff(req)
			// Only reached when the exec failed; PID 1 keeps supervising.
			signal.Ignore(initIgnored...)
			log.L.WithError(err).Errorf("handoff to %s failed: PID 1 stays the msb init", req.Init)
			errCh <- nil
		}()
		if err := <-errCh; err != nil {
			fmt.Fprintf(c, "error: %v\n", err)
		}
	}
}

// prepareHandoff checks the program and, in a private mount namespace of
// the calling (locked) thread, gives the new root /proc, /sys and /dev (bind
// mounts of PID 1's, where the root has the directories).
func prepareHandoff(req HandoffRequest) error {
	if req.Root == "" || !filepath.IsAbs(req.Init) || len(req.Args) == 0 {
		return errors.New("handoff request needs root, an absolute init and argv")
	}
	if err := executableIn(req.Root, req.Init); err != nil {
		return fmt.Errorf("%s in %s: %w", req.Init, req.Root, err)
	}
	if req.Root == "/" {
		return nil
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	for _, d := range []string{"/proc", "/sys", "/dev"} {
		dst := filepath.Join(req.Root, d)
		if fi, err := os.Lstat(dst); err != nil || !fi.IsDir() {
			continue
		}
		if err := unix.Mount(d, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s into %s: %w", d, req.Root, err)
		}
	}
	return nil
}

func execHandoff(req HandoffRequest) error {
	if req.Root != "/" {
		if err := unix.Chroot(req.Root); err != nil {
			return fmt.Errorf("chroot %s: %w", req.Root, err)
		}
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	// Give the user's init default signal dispositions and OOM score.
	signal.Reset()
	setOOMScoreAdj(0)
	return syscall.Exec(req.Init, req.Args, req.Env)
}

// oomNever is the oom_score_adj that exempts a process from the OOM killer.
const oomNever = -1000

func setOOMScoreAdj(v int) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(v)), 0); err != nil {
		log.L.WithError(err).Warnf("oom_score_adj %d", v)
	}
}
