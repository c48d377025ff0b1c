package qemujail

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/kvmprobe"
	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/vmm"
)

func TestParseLibList(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
	libs, err := parseLibList([]byte(out), "/lib64/ld-linux-x86-64.so.2")
	want := []string{"/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6"}
	if err != nil || !slices.Equal(libs, want) {
		t.Fatalf("got %q, %v; want %q", libs, err, want)
	}
	if _, err := parseLibList([]byte("\tlibgone.so.1 => not found\n"), "/ld"); err == nil {
		t.Fatal("a missing library passed")
	}
	script := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec qemu-system-x86_64 \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := sharedLibs(script); err == nil || !strings.Contains(err.Error(), "jail = false") {
		t.Fatalf("a wrapper script: %v, want an error that names jail = false", err)
	}
}

func TestQEMUJailPlan(t *testing.T) {
	sh, err := exec.LookPath("sh") // any dynamic binary will do
	if err != nil {
		t.Skip(err)
	}
	c := testConfig(t)
	c.Kernel, c.Initrd, c.Modules = "/img/vmlinux", "/img/initrd", "/img/modules"
	c.Shares = []vmm.Share{{Tag: "r", Path: "/rootfs"}, {Tag: "v", Path: "/vol", ReadOnly: true}}
	c.Disks = []vmm.Disk{{Tag: "d", Path: "/d.img", Format: "raw", ReadOnly: true}}
	plan := func(kvm bool) map[string]jail.Bind {
		p, err := Plan(c, sh, "/s/x.chan.sock", kvm, []string{"-m", "1"})
		if err != nil {
			t.Fatal(err)
		}
		if p.Root != filepath.Join(c.RuntimeDir, "jail") || p.Args[0] != p.Path || p.Args[1] != "-m" {
			t.Fatalf("plan %+v", p)
		}
		if !p.Seccomp || p.PrivateRAM {
			t.Errorf("a booted VM's plan: Seccomp %v, PrivateRAM %v; want the filter without the template's rule", p.Seccomp, p.PrivateRAM)
		}
		m := map[string]jail.Bind{}
		for _, b := range p.Binds {
			m[b.Path] = b
		}
		return m
	}
	m := plan(false)
	// A VM started from a template: the filter fakes the hole punch its
	// sealed RAM refuses (ADR 025).
	clone := *c
	clone.Template = "/p/template.sock"
	if p, err := Plan(&clone, sh, "/s/x.chan.sock", false, nil); err != nil || !p.PrivateRAM {
		t.Errorf("a template clone's plan: PrivateRAM %v, %v", p != nil && p.PrivateRAM, err)
	}
	real, _ := filepath.EvalSymlinks(sh)
	for path, want := range map[string]jail.Bind{
		real:                 {ReadOnly: true, Exec: true},
		"/img/vmlinux":       {ReadOnly: true},
		"/img/initrd":        {ReadOnly: true},
		"/img/modules":       {ReadOnly: true},
		"/rootfs":            {IDMap: true},
		"/vol":               {ReadOnly: true, IDMap: true},
		"/d.img":             {ReadOnly: true, IDMap: true},
		"/s/x.chan.sock":     {IDMap: true},
		vmm.ConsoleSocket(c): {IDMap: true},
		vmm.MonitorSocket(c): {IDMap: true},
		"/dev/null":          {Dev: true},
		"/dev/urandom":       {Dev: true},
		"/etc/ld.so.cache":   {ReadOnly: true},
		"/does/not/matter/x": {},
	} {
		if path == "/does/not/matter/x" || (path == "/etc/ld.so.cache" && !exists(path)) {
			continue
		}
		got, ok := m[path]
		want.Path = path
		if !ok || got != want {
			t.Errorf("%s: got %+v (listed %v), want %+v", path, got, ok, want)
		}
	}
	libc := false
	for p, b := range m {
		libc = libc || strings.Contains(p, "libc.so") && b.Exec && b.ReadOnly
		if strings.HasPrefix(p, "/etc/") && p != "/etc/ld.so.cache" || strings.HasPrefix(p, "/home") {
			t.Errorf("the jail would hold %s", p)
		}
	}
	if !libc {
		t.Errorf("no libc among the binds: %v", m)
	}
	if _, ok := m[kvmprobe.Device]; ok {
		t.Error("/dev/kvm in a TCG jail")
	}
	if _, ok := plan(true)[kvmprobe.Device]; !ok {
		t.Error("no /dev/kvm in a KVM jail")
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// jailTestChild is the test binary run as the jailed program (TestJail):
// it tries what qemu's 9p server does on the shares, prints the results,
// and waits for stdin to close.
func jailTestChild() int {
	rw, ro := os.Getenv("JAIL_RW"), os.Getenv("JAIL_RO")
	try := func(name string, err error) {
		r := "ok"
		if err != nil {
			r = err.Error()
		}
		fmt.Printf("%s=%s\n", name, r)
	}
	f := filepath.Join(rw, "owned")
	try("create", os.WriteFile(f, []byte("x"), 0o600))
	try("chown", os.Chown(f, 1000, 1000))
	try("chmod-setgid", unix.Chmod(f, 0o2755))
	var st unix.Stat_t
	_ = unix.Stat(f, &st)
	fmt.Printf("mode=%o\n", st.Mode&0o7777)
	try("chmod-other", os.Chmod(f, 0o600)) // owned by 1000 now: CAP_FOWNER
	try("read-other", func() error { _, err := os.ReadFile(f); return err }())
	try("chmod-procfd", func() error { // as qemu's 9p server changes modes
		fd, err := unix.Open(f, unix.O_PATH|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return os.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), 0o640)
	}())
	try("sysctl", os.WriteFile("/proc/sys/kernel/core_pattern", []byte("|/x"), 0))
	try("mknod-dev", unix.Mknod(filepath.Join(rw, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	try("mkfifo", unix.Mkfifo(filepath.Join(rw, "fifo"), 0o600))
	try("setfcap", unix.Setxattr(f, "security.capability", []byte{0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	try("write-ro", os.WriteFile(filepath.Join(ro, "x"), nil, 0o600))
	try("setuid", unix.Setuid(1000))
	var pdeathsig int32
	_ = unix.Prctl(unix.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&pdeathsig)), 0, 0, 0)
	fmt.Printf("pdeathsig=%d\n", pdeathsig)
	try("chown-unmapped", os.Chown(f, 4000000000, 4000000000)) // outside its ids
	root := os.Getenv("JAIL_ROOTFILE")                         // host root's, 0600: an image's
	try("read-root", func() error { _, err := os.ReadFile(root); return err }())
	try("chown-root", os.Chown(f, 0, 0))
	// Nowhere outside its shares can it make a file (as any owner).
	outside := ""
	for _, d := range []string{"/", "/dev", "/proc", "/etc", "/usr", "/tmp", filepath.Dir(rw)} {
		if err := os.WriteFile(filepath.Join(d, "escaped"), nil, 0o600); err == nil {
			outside += " " + d
		}
	}
	try("write-outside", func() error {
		if outside != "" {
			return fmt.Errorf("wrote in%s", outside)
		}
		return nil
	}())
	try("env", func() error {
		if e := os.Getenv("PATH"); e != "" {
			return fmt.Errorf("PATH=%s", e)
		}
		return nil
	}())
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestJail runs the real jail helper with the test binary as its program
// and checks the process's privileges, what it can do on its shares, and
// that its root holds its plan's paths only.
func TestJail(t *testing.T) { testJail(t, false) }

// TestJailHostIDs is TestJail with a user namespace that maps the host's
// ids to themselves (shares that cannot be id-mapped, ADR 022): qemu is
// its id jail.IDBase, the VM's base on the host, not its root.
func TestJailHostIDs(t *testing.T) { testJail(t, true) }

func testJail(t *testing.T, hostIDs bool) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := testConfig(t)
	rw, ro, pod, other := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	c.Shares = []vmm.Share{{Tag: "rw", Path: rw}, {Tag: "ro", Path: ro, ReadOnly: true}, {Tag: "pod", Path: pod, MultiDevs: true}}
	if err := os.WriteFile(filepath.Join(other, "secret"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{vmm.ChannelSocket(c), vmm.ConsoleSocket(c), vmm.MonitorSocket(c)} {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: s, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
	}
	c.Kernel = self // any file
	plan, err := Plan(c, self, vmm.ChannelSocket(c), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := jail.AllocIDs(c.RuntimeDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ids.Release()
	userns, err := jail.NewUserNS(ids.Base(), nil, hostIDs)
	if err != nil {
		t.Fatal(err)
	}
	defer userns.Close()
	plan.HostIDs = hostIDs
	rootFile := filepath.Join(rw, "root-only")
	if err := os.WriteFile(rootFile, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !plan.Seccomp {
		t.Error("a qemu jail without the seccomp allow-list")
	}
	plan.Seccomp = false // qemu's, not this Go program's (TestQEMUSeccomp)
	plan.Env = []string{"MSB_JAIL_TEST_CHILD=1", "JAIL_RW=" + rw, "JAIL_RO=" + ro, "JAIL_ROOTFILE=" + rootFile}
	plan.Pdeathsig = int(syscall.SIGKILL) // the program's, whichever thread execs it
	cmd, planf, err := jail.Command(plan, nil, userns, nil)
	if err != nil {
		t.Fatal(err)
	}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	// The parent-death signal follows the thread that forks: fork from
	// one that lives as long as the test (InMountNS below ends threads).
	started, release := make(chan error), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		started <- cmd.Start()
		<-release
	}()
	defer close(release)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	planf.Close()
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	got := map[string]string{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "ready" {
		k, v, _ := strings.Cut(sc.Text(), "=")
		got[k] = v
	}
	t.Logf("in the jail: %v", got)
	for k, want := range map[string]string{
		"create": "ok", "chown": "ok", "chmod-setgid": "ok", "mode": "2755", "chmod-other": "ok", "read-other": "ok",
		"chmod-procfd": "ok", "sysctl": "open /proc/sys/kernel/core_pattern: no such file or directory",
		"mknod-dev": "operation not permitted", "mkfifo": "ok", "setfcap": "operation not permitted",
		"write-ro": "open " + filepath.Join(ro, "x") + ": read-only file system", "setuid": "operation not permitted",
		"chown-unmapped": "chown " + filepath.Join(rw, "owned") + ": invalid argument", "env": "ok", "write-outside": "ok", "pdeathsig": "9",
		"read-root": "ok", "chown-root": "ok",
	} {
		if got[k] != want {
			t.Errorf("%s: got %q, want %q", k, got[k], want)
		}
	}

	pid := cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Root (or jail.IDBase) of its own user namespace: on the host, an
	// unprivileged user of a range of its own; its capabilities count
	// only there.
	if want := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\n", ids.Base(), ids.Base(), ids.Base(), ids.Base()); !strings.Contains(string(status), want) {
		t.Errorf("/proc/%d/status lacks %q:\n%s", pid, want, status)
	}
	if st, err := os.Stat(filepath.Join(rw, "owned")); err != nil || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("a file the jail chowned to 1000, then 0, is not owned by host root: %v", err)
	}
	amb := "0000000000000000"
	if hostIDs {
		amb = "000000000000001b"
	}
	for _, want := range []string{"NoNewPrivs:\t1", "CapInh:\t000000000000001b", "CapPrm:\t000000000000001b",
		"CapEff:\t000000000000001b", "CapBnd:\t000000000000001b", "CapAmb:\t" + amb} {
		if !strings.Contains(string(status), want+"\n") {
			t.Errorf("/proc/%d/status lacks %q:\n%s", pid, want, status)
		}
	}

	for _, ns := range []string{"mnt", "pid", "ipc", "net", "user"} {
		mine, _ := os.Readlink("/proc/self/ns/" + ns)
		its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err != nil || its == mine {
			t.Errorf("the jail shares the %s namespace (%s, %v)", ns, its, err)
		}
	}

	// A pod member bound below the pod share after the start, in the
	// jail's namespace only (ADR 019): there, read-only; on the host, no
	// mount point.
	member := filepath.Join(pod, "c1")
	if err := os.Mkdir(member, 0o700); err != nil {
		t.Fatal(err)
	}
	j, err := jail.OpenNS(os.Getpid())
	if err != nil || j == nil || hostIDs != (j.User == nil) || !hostIDs && j.IDBase != ids.Base() || hostIDs && j.Hypervisor != ids.Base() {
		t.Fatalf("jail.OpenNS: %+v, %v (ids from %d)", j, err, ids.Base())
	}
	defer j.Close()
	jns := j.Mnt
	var idmap *mounts.IDMap
	memberUID := uint32(1000) // a plain bind: the host's ids are the jail's
	if !hostIDs {
		idmap, memberUID = &mounts.IDMap{NS: j.User}, ids.Base()+1000
	}
	if err := os.WriteFile(filepath.Join(ro, "owned-by-1000"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(ro, "owned-by-1000"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := mounts.BindBeneathIn(jns, pod, "c1/tag", ro, mounts.ReadOnlyRecursive, idmap); err != nil {
		t.Fatal(err)
	}
	root := fmt.Sprintf("/proc/%d/root", pid)

	if err := os.WriteFile(filepath.Join(ro, "late"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, member, "tag", "x"), nil, 0o600); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to a read-only pod member in the jail: %v, want EROFS", err)
	}
	if !exists(filepath.Join(root, member, "tag", "late")) {
		t.Error("a pod member bound after the start is not in the jail")
	}
	// Seen by the jail as owned by its 1000: through an id-mapped bind,
	// the host's base+1000.
	if st, err := os.Stat(filepath.Join(root, member, "tag", "owned-by-1000")); err != nil || st.Sys().(*syscall.Stat_t).Uid != memberUID {
		t.Errorf("a pod member's file owned by 1000 is not the jail's 1000 (host %d): %v %v", memberUID, st, err)
	}
	if m, _ := mountinfo.Mounted(filepath.Join(member, "tag")); m {
		t.Error("a pod member's bind is a mount point on the host")
	}
	if err := mounts.UnmountBeneathIn(jns, pod, "c1/tag"); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(root, member, "tag", "late")) {
		t.Error("a pod member is still in the jail after UnmountBeneathIn")
	}

	named := map[string]bool{} // the plan's paths, as given and resolved
	for _, b := range plan.Binds {
		named[b.Path] = true
		if real, err := filepath.EvalSymlinks(b.Path); err == nil {
			named[real] = true
		}
	}
	// Every entry must be a named path, below a named directory, a symlink
	// the host has too (the jail recreates those on its paths), or a
	// directory on the way to one of these.
	var seen, dirs []string
	ok := map[string]bool{}
	_ = filepath.WalkDir(root+"/", func(p string, d fs.DirEntry, err error) error {
		rel := strings.TrimSuffix(strings.TrimPrefix(p, root), "/")
		if rel == "" || d == nil {
			return nil
		}
		seen = append(seen, rel)
		if rel == "/proc" {
			ents, _ := os.ReadDir(p)
			for _, e := range ents {
				if !slices.Contains([]string{"1", "self", "thread-self"}, e.Name()) {
					t.Errorf("the jail's /proc holds %s", e.Name())
				}
			}
			return filepath.SkipDir
		}
		in, _ := os.Readlink(p)
		host, _ := os.Readlink(rel)
		if named[rel] || d.Type()&fs.ModeSymlink != 0 && in == host {
			for a := rel; a != "/"; a = filepath.Dir(a) {
				ok[a] = true
			}
		} else if d.IsDir() {
			dirs = append(dirs, rel)
		} else {
			t.Errorf("the jail holds %s, which its plan does not name", rel)
		}
		if d.IsDir() && named[rel] {
			return filepath.SkipDir // a bound dir: its content is the host's
		}
		return nil
	})
	for _, d := range dirs {
		if !ok[d] {
			t.Errorf("the jail holds the directory %s, on no named path", d)
		}
	}
	for _, absent := range []string{"/etc/passwd", "/home", "/root", other, "/usr/bin/sh"} {
		if slices.Contains(seen, absent) {
			t.Errorf("%s is in the jail", absent)
		}
	}
	if !slices.Contains(seen, rw) || !slices.Contains(seen, "/dev/null") {
		t.Errorf("the jail lacks its shares or devices: %v", seen)
	}
}
