// Package qemujail plans the jail the qemu backend runs qemu in (package
// jail executes it, ADR 013, docs/security.md): what qemu needs for its VM
// (Plan), its user namespace (UserNS, ADR 022), and the mirrors that keep
// its propagated shares in step with the host's mounts (StartMirrors).
// It holds no VM state: the VMM process (package vmmproc) starts qemu.
package qemujail

import (
	"bufio"
	"bytes"
	"cmp"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/jail"
	"github.com/msb-dev/msb/kvmprobe"
	"github.com/msb-dev/msb/vmm"
)

// The VMM plans what qemu needs for its VM here, and the jail helper
// builds the root, drops privileges and execs qemu, which adds its own
// deny-list filter (-sandbox, jail.QEMUSandbox).

// jailCaps are the capabilities qemu keeps: what 9p passthrough
// (security_model=none) needs to act for every guest user on the shares:
// set owners, bypass permission checks, change modes and times of files
// it does not own, keep set-group-ID bits. Not CAP_MKNOD (device nodes in
// a share would open host devices), CAP_SETFCAP, CAP_SYS_ADMIN.
var jailCaps = []int{unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FOWNER, unix.CAP_FSETID}

// capNames names jailCaps in logs.
var capNames = map[int]string{unix.CAP_CHOWN: "chown", unix.CAP_DAC_OVERRIDE: "dac_override", unix.CAP_FOWNER: "fowner", unix.CAP_FSETID: "fsetid"}

// CapList names caps for a log line.
func CapList(caps []int) string {
	var s []string
	for _, c := range caps {
		if n, ok := capNames[c]; ok {
			s = append(s, n)
		} else {
			s = append(s, fmt.Sprint(c))
		}
	}
	return strings.Join(s, ",")
}

// jailDevices are the device nodes the jail holds besides /dev/kvm.
var jailDevices = []string{"/dev/null", "/dev/zero", "/dev/urandom"}

// jailDir is the empty directory in the VM's state dir that the jail's
// root is mounted on (only inside the jail's mount namespace).
const jailDir = "jail"

// Plan lists what qemu needs for c: its binary, libraries, data
// and module dirs, the guest image, shares, disks, its sockets and a few
// devices. bin is qemu's path as found on PATH.
func Plan(c *vmm.LaunchConfig, bin, chanSock string, kvm bool, args []string) (*jail.Plan, error) {
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w (install qemu-system-x86 or set qemu in /etc/msb/config.toml)", bin, err)
	}
	p := &jail.Plan{Root: filepath.Join(c.RuntimeDir, jailDir), Caps: jailCaps, Seccomp: true, Path: real,
		Args: append([]string{real}, args...),
		// A VM of a template maps its RAM from a sealed memfd (ADR 025).
		PrivateRAM: c.Template != ""}
	add := func(b jail.Bind) { p.Binds = append(p.Binds, b) }
	libs, err := sharedLibs(real)
	if err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	for _, l := range append([]string{real}, libs...) {
		add(jail.Bind{Path: l, ReadOnly: true, Exec: true})
	}
	if _, err := os.Stat("/etc/ld.so.cache"); err == nil {
		add(jail.Bind{Path: "/etc/ld.so.cache", ReadOnly: true})
	}
	// qemu finds firmware and modules relative to its binary, then in its
	// configured dirs (the same on distribution builds).
	prefix := filepath.Dir(filepath.Dir(real))
	mods, _ := filepath.Glob(filepath.Join(prefix, "lib", "*", "qemu"))
	for _, d := range append(mods, filepath.Join(prefix, "lib", "qemu"), filepath.Join(prefix, "lib64", "qemu")) {
		if isDir(d) {
			add(jail.Bind{Path: d, ReadOnly: true, Exec: true})
		}
	}
	if d := filepath.Join(prefix, "share", "qemu"); isDir(d) {
		add(jail.Bind{Path: d, ReadOnly: true})
		for _, t := range linksOutside(d) {
			add(jail.Bind{Path: t, ReadOnly: true})
		}
	}
	for _, f := range []string{c.Kernel, c.Initrd, c.RootDisk, c.Modules} {
		if f != "" {
			add(jail.Bind{Path: f, ReadOnly: true})
		}
	}
	for _, s := range c.Shares {
		if s.Shifted {
			add(jail.Bind{Path: s.Path, ReadOnly: s.ReadOnly})
		}
	}
	for _, p := range idMapped(c, chanSock) {
		b := jail.Bind{Path: p, IDMap: true}
		for _, s := range c.Shares {
			if s.Path == p {
				b.ReadOnly = b.ReadOnly || s.ReadOnly
				b.Mirrored = b.Mirrored || s.Propagated
				b.File = cmp.Or(b.File, s.IDMappedFile)
			}
		}
		for _, d := range c.Disks {
			if d.Path == p {
				st, err := os.Stat(d.Path)
				b.ReadOnly, b.Dev = d.ReadOnly, err == nil && st.Mode()&fs.ModeDevice != 0
			}
		}
		add(b)
	}
	devs := jailDevices
	if kvm {
		devs = append(devs[:len(devs):len(devs)], kvmprobe.Device)
	}
	for _, d := range devs {
		add(jail.Bind{Path: d, Dev: true})
	}
	return p, nil
}

// idMapped lists the paths qemu writes or connects to, which the jail
// binds id-mapped: the VM's shares, disks and sockets.
func idMapped(c *vmm.LaunchConfig, chanSock string) []string {
	var ps []string
	for _, s := range c.Shares {
		if !s.Shifted {
			ps = append(ps, s.Path)
		}
	}
	for _, d := range c.Disks {
		ps = append(ps, d.Path)
	}
	return append(ps, chanSock, vmm.ConsoleSocket(c), vmm.MonitorSocket(c))
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// linksOutside returns the targets of dir's symlinks that lie outside dir
// (distributions link firmware from other packages' dirs).
func linksOutside(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		t, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
		if err == nil && !strings.HasPrefix(t, dir+"/") {
			out = append(out, t)
		}
	}
	return out
}

// sharedLibs lists the libraries bin loads, as its dynamic loader resolves
// them (`ld.so --list`, what ldd runs), the loader included; none for a
// static binary.
func sharedLibs(bin string) ([]string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: the jail runs qemu's own binary, not a wrapper script; set qemu to the binary, or jail = false in /etc/msb/config.toml", bin, err)
	}
	defer f.Close()
	interp := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, fmt.Errorf("%s: read its loader: %w", bin, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	if interp == "" {
		return nil, nil
	}
	var stderr bytes.Buffer
	cmd := exec.Command(interp, "--list", bin)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list %s: %w: %s", interp, bin, err, strings.TrimSpace(stderr.String()))
	}
	return parseLibList(out, interp)
}

// parseLibList reads the loader's --list output: "name => /path (0x…)",
// "/path (0x…)" for the loader, "name (0x…)" for the vDSO.
func parseLibList(out []byte, interp string) ([]string, error) {
	libs := []string{interp}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if _, p, ok := strings.Cut(line, " => "); ok {
			line = p
		}
		p, _, _ := strings.Cut(line, " (")
		switch {
		case p == "not found":
			return nil, fmt.Errorf("a library is missing: %s", sc.Text())
		case strings.HasPrefix(p, "/") && p != interp:
			libs = append(libs, p)
		}
	}
	return libs, nil
}
