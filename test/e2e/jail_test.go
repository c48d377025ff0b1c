package e2e

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/ociruntime"
	"github.com/msb-dev/msb/vmm"
)

// TestJailedQEMU checks qemu's jail (ADR 013) on a running VM: both
// seccomp filters, no_new_privs, the four capabilities 9p needs, a mount namespace holding
// only this VM's files; and that a container still writes a rw bind (with
// ownership, and every kind of file operation, each a 9p call qemu makes
// under the allow-list) and reads an ext4 qcow2 disk through it, while device nodes
// cannot be made in a share.
func TestJailedQEMU(t *testing.T) {
	requireJail(t)
	root := stateRoot(t)
	// Another VM's state and relay socket: not for this VM's qemu.
	decoys := []string{filepath.Join(root, "vms", "other", "secret"), filepath.Join(ociruntime.SocketDir(root), "other.sock")}
	for _, d := range decoys {
		if err := os.MkdirAll(filepath.Dir(d), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(d, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rw, content, imgDir := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(content, "hello"), []byte("from the qcow2 disk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	raw, img := filepath.Join(imgDir, "disk.img"), filepath.Join(imgDir, "disk.qcow2")
	for _, c := range [][]string{{"mkfs.ext4", "-q", "-F", "-d", content, raw, "16M"}, {"qemu-img", "convert", "-O", "qcow2", raw, img}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", c, err, out)
		}
	}
	script := `echo written-in-guest > /rw/out.txt && chown 1000:1000 /rw/out.txt && echo chown-ok
busybox mknod /rw/null c 1 3 2>/dev/null && echo mknod-ok || echo mknod-refused
cd /rw && busybox mkdir -p d/e && busybox touch d/f && busybox ln -s f d/l && busybox ln d/f d/h &&
  busybox mv d/h d/e/h && busybox chmod 600 d/f && busybox chown -h 1000 d/l &&
  busybox truncate -s 4096 d/f && busybox fallocate -l 8192 d/f && busybox touch -d '2020-01-01 00:00' d/f &&
  busybox readlink d/l >/dev/null && busybox stat -f /rw >/dev/null && busybox ls -laR d >/dev/null &&
  busybox dd if=/dev/zero of=d/g bs=4k count=4 conv=fsync 2>/dev/null && busybox sync && busybox rm -r d &&
  echo fs-ok || echo fs-failed
cd /
cat /data/hello
echo ready; exec sleep 1000`
	b := bundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		// What the guest lets through to qemu's 9p server.
		caps := []string{"CAP_CHOWN", "CAP_MKNOD", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_FSETID"}
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
		major, minor := int64(1), int64(3)
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &major, Minor: &minor, Access: "m"})
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: "/rw", Type: "bind", Source: rw, Options: []string{"rbind", "rw"}},
			specs.Mount{Destination: "/data", Type: "ext4", Source: img, Options: []string{"ro"}})
	})
	cmd := runtimeCmd(root, "run", "--bundle", b, "jailed")
	out := startOut(t, cmd)
	defer func() { _ = cmd.Process.Kill() }()
	var lines []string
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "ready" {
		lines = append(lines, sc.Text())
	}
	if want := []string{"chown-ok", "mknod-refused", "fs-ok", "from the qcow2 disk"}; !slices.Equal(lines, want) {
		t.Fatalf("container said %q, want %q", lines, want)
	}
	if _, err := os.Lstat(filepath.Join(rw, "null")); err == nil {
		t.Error("a device node made in the guest is on the host")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(rw, "out.txt"), &st); err != nil || st.Uid != 1000 || st.Gid != 1000 {
		t.Fatalf("rw bind write on the host: %+v, %v; want owner 1000:1000", st, err)
	}

	qemu := childNamed(t, childNamed(t, cmd.Process.Pid, "msb-runtime"), "qemu")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", qemu))
	if err != nil {
		t.Fatal(err)
	}
	// Seccomp_filters 2: qemu's own -sandbox and msb's allow-list.
	for _, want := range []string{"Seccomp:\t2", "Seccomp_filters:\t2", "NoNewPrivs:\t1", "CapEff:\t000000000000001b", "CapPrm:\t000000000000001b",
		"CapBnd:\t000000000000001b", "CapAmb:\t0000000000000000"} {
		if !strings.Contains(string(status), want+"\n") {
			t.Errorf("qemu's /proc/%d/status lacks %q", qemu, want)
		}
	}
	checkQEMUUnprivileged(t, qemu, string(status))

	jroot := fmt.Sprintf("/proc/%d/root", qemu)
	var seen []string
	_ = filepath.WalkDir(jroot+"/", func(p string, d fs.DirEntry, err error) error {
		rel := strings.TrimPrefix(p, jroot)
		if rel != "/" {
			seen = append(seen, rel)
		}
		if rel == "/proc" { // its own pid namespace's, process dirs only
			ents, _ := os.ReadDir(p)
			for _, e := range ents {
				if !slices.Contains([]string{"1", "self", "thread-self"}, e.Name()) {
					t.Errorf("qemu's /proc holds %s", e.Name())
				}
			}
			return filepath.SkipDir
		}
		return nil
	})
	t.Logf("qemu's root holds %d paths", len(seen))
	sock, _ := vmm.AgentSocketPath(ociruntime.SocketDir(root), "jailed")
	image := envOr("MSB_TEST_IMAGE", "/var/lib/msb")
	for _, absent := range append(decoys, "/etc/passwd", "/etc/msb", "/home", "/root", "/sys/kernel",
		sock, filepath.Join(vmm.StateDirPath(root, "jailed"), "vmm.log"), filepath.Join(image, "manifest.json"), msbRuntime) {
		if slices.Contains(seen, absent) {
			t.Errorf("%s is visible to qemu", absent)
		}
	}
	for _, present := range []string{filepath.Join(rw, "out.txt"), img, filepath.Join(image, "vmlinux"), "/dev/null"} {
		if !slices.Contains(seen, present) {
			t.Errorf("%s is not visible to qemu", present)
		}
	}
	for _, p := range seen {
		if dir := filepath.Dir(p); (dir == "/etc" && p != "/etc/ld.so.cache") || (dir == "/dev" && !slices.Contains([]string{"/dev/null", "/dev/zero", "/dev/urandom", "/dev/kvm"}, p)) {
			t.Errorf("%s is visible to qemu", p)
		}
	}

	for _, d := range decoys {
		os.Remove(d)
	}
	// As TestKillRuntimeLeavesNothing: the VMM stops the VM, its jail
	// included.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	assertNothingLeft(t, root)
}

// requireJail skips a test of qemu's jail where there is no VM, or where
// qemu runs unjailed (MSB_TEST_NO_JAIL=1).
func requireJail(t *testing.T) {
	t.Helper()
	requireVM(t)
	if os.Getenv("MSB_TEST_NO_JAIL") == "1" {
		t.Skip("MSB_TEST_NO_JAIL=1: qemu runs unjailed")
	}
}

// startOut starts cmd, its stderr the test's, and returns its stdout.
func startOut(t *testing.T, cmd *exec.Cmd) io.Reader {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkQEMUUnprivileged checks what ADR 022 adds to the jail: qemu is an
// unprivileged host user (root of a user namespace of its own, or its id
// 2^31 in one that maps the host's ids; its capabilities count only
// there), in an empty network namespace, with an empty environment, no
// core dumps, and a pids limit in its host cgroup; nothing it can write
// is outside its shares, disks and sockets: id-mapped, or in a host-ids
// namespace below one of plain.
func checkQEMUUnprivileged(t *testing.T, qemu int, status string, plain ...string) {
	t.Helper()
	umap, _ := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", qemu))
	hostIDs := strings.Fields(string(umap))
	if len(hostIDs) == 6 && hostIDs[0] == "0" && hostIDs[1] == "0" && hostIDs[2] == "2147483648" {
		t.Logf("qemu's namespace maps the host's ids: %q", umap)
	} else {
		hostIDs = nil
	}
	uid := -1
	for _, l := range strings.Split(status, "\n") {
		if f := strings.Fields(l); len(f) == 5 && f[0] == "Uid:" {
			if f[1] == f[2] && f[2] == f[3] && f[3] == f[4] {
				uid, _ = strconv.Atoi(f[1])
			}
		}
	}
	if uid < jail.IDBase {
		t.Errorf("qemu runs as host uid %d, want one of msb's ranges (from %d)", uid, jail.IDBase)
	}
	for _, ns := range []string{"user", "net", "mnt", "pid", "ipc"} {
		mine, _ := os.Readlink("/proc/self/ns/" + ns)
		its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", qemu, ns))
		if err != nil || its == mine {
			t.Errorf("qemu shares the host's %s namespace (%s, %v)", ns, its, err)
		}
	}
	// Its network namespace holds a loopback device and nothing else.
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(qemu), "-n", "ip", "-o", "link").CombinedOutput(); err != nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("qemu's network namespace: %s (%v), want lo alone", out, err)
	}
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", qemu)); err != nil || len(env) != 0 {
		t.Errorf("qemu's environment: %q (%v), want none", env, err)
	}
	if lim, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", qemu)); err != nil || !regexp.MustCompile(`Max core file size\s+0\s+0`).Match(lim) {
		t.Errorf("qemu may dump core (its guest memory): %s (%v)", lim, err)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", qemu))
	for _, l := range strings.Split(string(cg), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && (f[1] == "pids" || f[1] == "") && f[2] != "/" {
			dir := filepath.Join("/sys/fs/cgroup", f[2])
			if f[1] == "pids" {
				dir = filepath.Join("/sys/fs/cgroup/pids", f[2])
			}
			if b, err := os.ReadFile(filepath.Join(dir, "pids.max")); err != nil || strings.TrimSpace(string(b)) == "max" {
				t.Errorf("qemu's host cgroup %s has no pids limit: %q (%v)", dir, b, err)
			}
		}
	}
	// Every mount qemu may write is a share, a disk, a socket or a device,
	// id-mapped, or a rootfs overlay over id-mapped layers.
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", qemu))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(mi)), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || !slices.Contains(strings.Split(f[5], ","), "rw") {
			continue
		}
		shifted := strings.Contains(l, " - overlay ") && strings.Contains(l, "/layers/u/fs,") // mounts.MountShifted
		below := hostIDs != nil && slices.ContainsFunc(plain, func(p string) bool { return f[4] == p || strings.HasPrefix(f[4], p+"/") })
		if !shifted && !below && !strings.Contains(f[5], "idmapped") && !slices.Contains([]string{"/dev/null", "/dev/zero", "/dev/urandom", "/dev/kvm"}, f[4]) {
			t.Errorf("qemu may write %s, which is no id-mapped share, disk or socket of its own: %s", f[4], l)
		}
	}
}

// TestShimQEMUUnprivileged: a container run through containerd (its
// rootfs an overlayfs snapshot, mounted by the shim over id-mapped layers)
// gets an unprivileged qemu (ADR 022), and ownership in its rootfs is
// what the image and the container say: files of the image owned by
// root, a file the container creates and chowns keeps its owners on the
// snapshot's upper dir.
func TestShimQEMUUnprivileged(t *testing.T) {
	requireJail(t)
	e := startShimEnv(t)
	const id = "unpriv"
	e.startDetached(t, id, "sleep", "600")
	e.waitStatus(t, id, "RUNNING", time.Minute)
	defer e.remove(t, id)
	out, _, err := e.Ctr("task", "exec", "--exec-id", "own", id, "sh", "-c",
		"stat -c %u:%g /bin/busybox; echo x > /made && chown 1000:1001 /made && stat -c %u:%g /made; echo y > /bin/copied-up && stat -c %u /bin/copied-up")
	if err != nil {
		t.Fatal(err)
	}
	if want := "0:0\n1000:1001\n0\n"; out != want {
		t.Errorf("ownership in the guest: %q, want %q", out, want)
	}
	qemu := childNamed(t, e.vmmPid(t, id), "qemu")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", qemu))
	if err != nil {
		t.Fatal(err)
	}
	checkQEMUUnprivileged(t, qemu, string(status))
	// On the host, the snapshot's upper dir holds the guest's owners.
	var st syscall.Stat_t
	found := false
	_ = filepath.WalkDir(e.Dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "made" && strings.Contains(p, "snapshots") {
			if syscall.Lstat(p, &st) == nil && st.Uid == 1000 && st.Gid == 1001 {
				found = true
			}
		}
		return nil
	})
	if !found {
		t.Error("the file the container made is not owned 1000:1001 in its snapshot on the host")
	}
}
