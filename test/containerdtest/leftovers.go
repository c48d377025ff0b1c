package containerdtest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/msb-dev/msb/mounts"
)

// Leftovers lists processes (other than containerd itself) and mounts that
// still refer to this containerd: a process whose command line names its
// socket or directory (shims get -address, VMMs the rootfs), whose root,
// cwd or executable lies under it, that sits in a cgroup of the namespace
// made for it, or that has a mount namespace of its own with mounts from
// under Dir (a runc container); a mount under Dir.
func (c *Containerd) Leftovers() (procs []Proc, mountPoints []string) {
	return c.procs(), mountsUnder(c.Dir)
}

// Proc is a leftover process.
type Proc struct {
	Pid     int
	Cmdline string
}

func (c *Containerd) procs() []Proc {
	self, cpid := os.Getpid(), c.Pid()
	selfMnt, _ := os.Readlink("/proc/self/ns/mnt")
	ents, _ := os.ReadDir("/proc")
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == cpid {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(cmdline) == 0 {
			continue // gone, or a kernel thread / zombie
		}
		cl := strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		if c.refersToUs(pid, cl, selfMnt) {
			out = append(out, Proc{Pid: pid, Cmdline: cl})
		}
	}
	return out
}

func (c *Containerd) refersToUs(pid int, cmdline, selfMnt string) bool {
	under := func(p string) bool { return p == c.Dir || strings.HasPrefix(p, c.Dir+"/") }
	// shims (-address), VMMs and anything else naming our files
	if strings.Contains(cmdline, c.Dir+"/") || strings.Contains(cmdline, c.Address) {
		return true
	}
	proc := fmt.Sprintf("/proc/%d/", pid)
	for _, l := range []string{"root", "cwd", "exe"} {
		if p, err := os.Readlink(proc + l); err == nil && under(p) {
			return true
		}
	}
	// a container of our own namespace: runc puts it in cgroup /<namespace>/<id>
	if c.ownNamespace {
		if b, err := os.ReadFile(proc + "cgroup"); err == nil && strings.Contains(string(b), "/"+c.Namespace+"/") {
			return true
		}
	}
	// a process in a mount namespace of its own (a container: its root and
	// cwd read as "/") whose mounts come from under Dir (its rootfs)
	if mnt, err := os.Readlink(proc + "ns/mnt"); err == nil && mnt != selfMnt {
		if b, err := os.ReadFile(proc + "mountinfo"); err == nil && bytes.Contains(b, []byte(c.Dir+"/")) {
			return true
		}
	}
	return false
}

// cleanup removes every task and container containerd knows, stops it,
// kills whatever still refers to it, unmounts everything under Dir and
// removes Dir.
func (c *Containerd) cleanup() {
	c.mu.Lock()
	if c.cleaned {
		c.mu.Unlock()
		return
	}
	c.cleaned = true
	c.mu.Unlock()
	if c.t.Failed() {
		c.t.Logf("containerdtest: containerd log (%s), last part:\n%s", c.LogPath, c.logTail(16<<10))
	}
	namespaces := []string{c.Namespace}
	if c.Running() {
		namespaces = c.removeAll()
	}
	c.Stop()
	for i := 0; i < 20; i++ {
		procs := c.procs()
		if len(procs) == 0 {
			break
		}
		for _, p := range procs {
			if i == 0 {
				c.t.Logf("containerdtest: killing leftover pid %d: %s", p.Pid, p.Cmdline)
			}
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if left := c.procs(); len(left) > 0 {
		c.t.Errorf("containerdtest: processes left after cleanup: %v", left)
	}
	if err := mounts.UnmountBelow(c.Dir); err != nil {
		c.t.Errorf("containerdtest: %v", err)
	}
	for _, ns := range namespaces {
		// runc's state and the cgroups of a namespace: all of it for the
		// namespace made for this containerd (tasks of a killed shim leave
		// theirs), else only when empty
		cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", ns)) // v1: one per controller
		cgroups = append(cgroups, filepath.Join("/sys/fs/cgroup", ns))     // v2
		if ns == c.Namespace && c.ownNamespace {
			_ = os.RemoveAll(filepath.Join("/run/containerd/runc", ns))
			for _, d := range cgroups {
				removeCgroup(d)
			}
			continue
		}
		_ = os.Remove(filepath.Join("/run/containerd/runc", ns))
		for _, d := range cgroups {
			_ = os.Remove(d)
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		c.t.Errorf("containerdtest: %v", err)
	}
}

// removeCgroup removes a cgroup directory and its children, deepest first
// (a cgroup directory goes with rmdir once it has no processes).
func removeCgroup(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.IsDir() {
			removeCgroup(filepath.Join(dir, e.Name()))
		}
	}
	_ = os.Remove(dir)
}

// removeAll deletes, in every namespace, all tasks (killed first) and all
// containers, so their shims exit and their mounts go. It returns the
// namespaces it saw.
func (c *Containerd) removeAll() []string {
	out, _, err := c.ctrQuick(c.Namespace, "namespaces", "ls", "-q")
	if err != nil {
		c.t.Logf("containerdtest: cleanup: %v", err)
		return []string{c.Namespace}
	}
	nss := strings.Fields(out)
	for _, ns := range nss {
		tasks, _, _ := c.ctrQuick(ns, "tasks", "ls", "-q")
		for _, id := range strings.Fields(tasks) {
			if _, _, err := c.ctrQuick(ns, "tasks", "delete", "--force", id); err != nil {
				c.t.Logf("containerdtest: cleanup: %v", err)
			}
		}
		ctrs, _, _ := c.ctrQuick(ns, "containers", "ls", "-q")
		if ids := strings.Fields(ctrs); len(ids) > 0 {
			if _, _, err := c.ctrQuick(ns, append([]string{"containers", "delete"}, ids...)...); err != nil {
				c.t.Logf("containerdtest: cleanup: %v", err)
			}
		}
	}
	return nss
}

// mountsUnder lists the mount points at or under dir.
func mountsUnder(dir string) []string {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	return out
}
