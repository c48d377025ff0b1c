package guest

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The guest's OCI runtimes (Options.Runtime).
const (
	// RuntimeRunc is a static runc (hack/build-runc.sh) at /sbin/runc.
	RuntimeRunc = "runc"
	// RuntimeCrun is the distribution's crun at /sbin/crun with its loader
	// and shared libraries: a C program starts a container in a fraction of
	// runc's time, which counts most under TCG (ADR 021).
	RuntimeCrun = "crun"
)

// GuestRuntimeFile names the OCI runtime binary the agent runs (one guest
// path and a newline); the agent reads it at start (task.RuntimeFile in package agent/task).
const GuestRuntimeFile = "/etc/msb/oci-runtime"

// libDirs are where the loader looks for a library without an
// ld.so.cache, which the guest does not have: glibc's built-in system
// directories on Debian and Ubuntu (multiarch first).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// runtimeImage is the OCI runtime part of the guest root.
type runtimeImage struct {
	name    string      // RuntimeRunc or RuntimeCrun
	exe     []byte      // the runtime binary
	libs    []string    // guest paths of its loader and libraries, loader first; none for a static runc
	entries []CpioEntry // the binary, the libraries and GuestRuntimeFile
}

// loadRuntime reads the OCI runtime of o: a static runc, or crun and the
// shared-library closure its loader will ask for in the guest.
func loadRuntime(o Options) (*runtimeImage, error) {
	r := &runtimeImage{name: o.Runtime}
	var err error
	switch o.Runtime {
	case "", RuntimeRunc:
		r.name = RuntimeRunc
		if o.RuncPath == "" {
			return nil, fmt.Errorf("guest: Options.RuncPath is required for the runtime %s", RuntimeRunc)
		}
		if r.exe, err = readStaticExe(o.RuncPath, "runc"); err != nil {
			return nil, err
		}
	case RuntimeCrun:
		if o.CrunPath == "" {
			return nil, fmt.Errorf("guest: Options.CrunPath is required for the runtime %s (e.g. /usr/bin/crun: apt-get install crun)", RuntimeCrun)
		}
		var libs []CpioEntry
		if r.exe, libs, err = readDynamicExe(o.CrunPath, "crun", libDirs); err != nil {
			return nil, err
		}
		for _, l := range libs {
			r.libs = append(r.libs, "/"+l.Name)
		}
		r.entries = libs
	default:
		return nil, fmt.Errorf("guest: Options.Runtime %q: want %q or %q", o.Runtime, RuntimeRunc, RuntimeCrun)
	}
	r.entries = append(r.entries, runtimeEntries(r.name, r.exe)...)
	return r, nil
}

// runtimeEntries are the guest root entries of the runtime binary exe, at
// /sbin/<name>, and of GuestRuntimeFile naming it.
func runtimeEntries(name string, exe []byte) []CpioEntry {
	return []CpioEntry{
		{Name: "sbin/" + name, Mode: sIFREG | 0o755, Data: exe},
		{Name: strings.TrimPrefix(GuestRuntimeFile, "/"), Mode: sIFREG | 0o644, Data: []byte("/sbin/" + name + "\n")},
	}
}

// readDynamicExe reads a dynamically linked x86-64 executable and the guest
// root entries of its loader (PT_INTERP) and of every library it needs,
// directly or through another library (DT_NEEDED), looked up in dirs the
// way the loader does. Each lands at the path it has on this machine, with
// the content of the file (symlinks followed). It reads the ELF headers
// instead of running ldd, which would run the binary's own loader.
func readDynamicExe(p, what string, dirs []string) ([]byte, []CpioEntry, error) {
	exe, err := os.ReadFile(p)
	if err != nil {
		return nil, nil, fmt.Errorf("guest: %s: %w", what, err)
	}
	f, err := openELF64(exe)
	if err != nil {
		return nil, nil, fmt.Errorf("guest: %s %s: %w", what, p, err)
	}
	interp := ""
	for _, pr := range f.Progs {
		if pr.Type == elf.PT_INTERP {
			b := make([]byte, pr.Filesz)
			if _, err := pr.ReadAt(b, 0); err != nil {
				return nil, nil, fmt.Errorf("guest: %s %s: PT_INTERP: %w", what, p, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	if interp == "" {
		return nil, nil, fmt.Errorf("guest: %s %s is statically linked; use it as a static runtime", what, p)
	}
	ld, err := os.ReadFile(interp)
	if err != nil {
		return nil, nil, fmt.Errorf("guest: %s %s: its loader: %w", what, p, err)
	}
	entries := []CpioEntry{{Name: strings.TrimPrefix(path.Clean(interp), "/"), Mode: sIFREG | 0o755, Data: ld}}
	// The loader is loaded already when libc names it by its soname.
	seen := map[string]bool{path.Base(interp): true}
	queue := []*elf.File{f}
	from := []string{p}
	for len(queue) > 0 {
		cur, curPath := queue[0], from[0]
		queue, from = queue[1:], from[1:]
		needed, err := cur.ImportedLibraries()
		if err != nil {
			return nil, nil, fmt.Errorf("guest: %s: %s: DT_NEEDED: %w", what, curPath, err)
		}
		rpath, _ := cur.DynString(elf.DT_RUNPATH)
		if len(rpath) == 0 {
			rpath, _ = cur.DynString(elf.DT_RPATH)
		}
		var search []string
		for _, rp := range rpath {
			for _, d := range strings.Split(rp, ":") {
				if strings.Contains(d, "$") {
					return nil, nil, fmt.Errorf("guest: %s: %s has the run path %q; only plain directories are supported", what, curPath, rp)
				}
				search = append(search, d)
			}
		}
		search = append(search, dirs...)
		for _, name := range needed {
			if seen[name] {
				continue
			}
			seen[name] = true
			libPath, data, lf, err := findLib(name, search)
			if err != nil {
				return nil, nil, fmt.Errorf("guest: %s %s: %s (needed by %s): %w", what, p, name, curPath, err)
			}
			entries = append(entries, CpioEntry{Name: strings.TrimPrefix(libPath, "/"), Mode: sIFREG | 0o644, Data: data})
			queue = append(queue, lf)
			from = append(from, libPath)
		}
	}
	return exe, entries, nil
}

// findLib looks a library up as the loader does: a name with a slash is a
// path, any other the first x86-64 ELF of that name in dirs.
func findLib(name string, dirs []string) (string, []byte, *elf.File, error) {
	cands := []string{name}
	if !strings.Contains(name, "/") {
		cands = cands[:0]
		for _, d := range dirs {
			cands = append(cands, filepath.Join(d, name))
		}
	}
	for _, c := range cands {
		b, err := os.ReadFile(c)
		if err != nil {
			continue
		}
		if f, err := openELF64(b); err == nil {
			return c, b, f, nil
		}
	}
	return "", nil, nil, fmt.Errorf("no x86-64 library of that name in %s (is its package installed?)", strings.Join(dirs, ":"))
}

// openELF64 parses an x86-64 ELF file.
func openELF64(b []byte) (*elf.File, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("not an ELF file: %w", err)
	}
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("for %v %v, want x86-64", f.Class, f.Machine)
	}
	return f, nil
}
