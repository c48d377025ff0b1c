package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Roles of the host processes a pod costs; qemu's PSS is split further
// (qemuSplit).
const (
	roleShim  = "shim"
	roleVMM   = "VMM process"
	roleQemu  = "qemu"
	roleOther = "other (pause, sleep, helpers)"
)

var roles = []string{roleShim, roleVMM, roleQemu, roleOther}

// proc is one process of the pods.
type proc struct {
	pid  int
	role string
	args []string
}

// podProcs lists the shims of this containerd (their command line names
// its socket) and every descendant of theirs, plus any process whose
// command line names the msb shim's state root (a VMM that was reparented)
// and its descendants.
func podProcs(sock, stateMsb string) []proc {
	children := map[int][]int{}
	args := map[int][]string{}
	var roots []int
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(b) == 0 {
			continue
		}
		a := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		args[pid] = a
		children[parentPid(pid)] = append(children[parentPid(pid)], pid)
		line := strings.Join(a, " ")
		// A template's holder is the node's, not a pod's.
		if strings.HasPrefix(filepath.Base(a[0]), "containerd-shim") && strings.Contains(line, "-address "+sock) ||
			strings.Contains(line, stateMsb+"/") && !strings.Contains(line, " pool hold ") {
			roots = append(roots, pid)
		}
	}
	seen := map[int]bool{}
	var out []proc
	var walk func(int)
	walk = func(pid int) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		if a, ok := args[pid]; ok {
			out = append(out, proc{pid: pid, args: a, role: roleOf(a)})
		}
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return out
}

func roleOf(a []string) string {
	b := filepath.Base(a[0])
	switch {
	case strings.HasPrefix(b, "containerd-shim"):
		return roleShim
	case b == "msb-runtime" && len(a) > 1 && a[1] == "vmm":
		return roleVMM
	case strings.HasPrefix(b, "qemu-system"):
		return roleQemu
	}
	return roleOther
}

// parentPid reads a process's parent from /proc/PID/stat; 0 if unknown.
func parentPid(pid int) int {
	f := statFields(pid)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// statFields are /proc/PID/stat's fields after the command name (which
// may hold spaces and parentheses): state, ppid, …
func statFields(pid int) []string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// cpuTicks is a process's utime + stime in clock ticks.
func cpuTicks(pid int) int64 {
	f := statFields(pid)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// memAvailableKiB is the node's MemAvailable.
func memAvailableKiB() int64 { return meminfo("MemAvailable") }

// meminfo reads one /proc/meminfo field in KiB.
func meminfo(field string) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// Parts of qemu's PSS, as smaps tells them apart.
const (
	partRAM  = "guest RAM"
	partTCG  = "TCG translation cache"
	partAnon = "heap and other anon"
	partFile = "mapped files"
)

var qemuParts = []string{partRAM, partTCG, partAnon, partFile}

// qemuSplit splits qemu's PSS (KiB) by mapping in /proc/PID/smaps:
//   - guest RAM: the anonymous mapping whose size is `-m` (qemu maps the
//     RAM block in one piece, plus at most a few MiB of alignment), or a
//     template's memfd mapped copy-on-write;
//   - TCG translation cache: an anonymous executable mapping (qemu's
//     code_gen_buffer, tb-size MiB), or the "tcg-jit" memfd under split-wx;
//   - mapped files: mappings with a file path (qemu's binary and libraries,
//     the kernel image it keeps as a ROM), counted by their PSS;
//   - the rest of the anonymous memory: heap, thread stacks, device state.
func qemuSplit(pid int, args []string) map[string]int64 {
	ramKiB := int64(-1)
	if i := slices.Index(args, "-m"); i >= 0 && i+1 < len(args) {
		m, _, _ := strings.Cut(args[i+1], ",") // -m 256[,slots=…]
		if n, err := strconv.ParseInt(strings.TrimSuffix(m, "M"), 10, 64); err == nil {
			ramKiB = n * 1024
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return map[string]int64{}
	}
	defer f.Close()
	return splitSmaps(f, ramKiB)
}

// splitSmaps sums the Pss of smaps' mappings by part (qemuSplit).
func splitSmaps(r io.Reader, ramKiB int64) map[string]int64 {
	out := map[string]int64{}
	sc := bufio.NewScanner(r)
	part := partAnon
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) == 0 {
			continue
		}
		if !strings.HasSuffix(fl[0], ":") { // a mapping's header: range perms offset dev inode [path]
			path := ""
			if len(fl) > 5 {
				path = strings.Join(fl[5:], " ")
			}
			perms := ""
			if len(fl) > 1 {
				perms = fl[1]
			}
			switch {
			case strings.Contains(path, "tcg-jit"):
				part = partTCG
			case strings.Contains(path, "memfd:msb-template-ram"):
				part = partRAM // a template's (ADR 025): its pages and the copies written

			case path != "" && !strings.HasPrefix(path, "["):
				part = partFile
			case path == "" && strings.Contains(perms, "x"):
				part = partTCG
			default:
				part = partAnon // decided on its Size line (guest RAM or not)
			}
			continue
		}
		n, _ := strconv.ParseInt(fl[1], 10, 64)
		switch fl[0] {
		case "Size:":
			if part == partAnon && ramKiB > 0 && n >= ramKiB && n <= ramKiB+8*1024 {
				part = partRAM
			}
		case "Pss:":
			out[part] += n
		}
	}
	return out
}

// pssKiB reads Pss from /proc/PID/smaps_rollup.
func pssKiB(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
