package modprobe

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/protocol"
)

// Name is the name under which the agent binary acts as modprobe: the
// initramfs links /sbin/modprobe to /init, and the kernel runs
// "/sbin/modprobe -q -- NAME" for request_module (in the guest's init
// namespaces, so containers need nothing).
const Name = "modprobe"

// Main is main for "modprobe [-q] [-v] [--] NAME [PARAM=VALUE ...]": it
// resolves NAME (a module name, '-' and '_' alike, or an alias from
// modules.alias, fnmatch patterns) in /lib/modules/<release>, loads the
// module's soft "pre:" dependencies, its dependencies from modules.dep and
// the module with finit_module. A built-in or already loaded module is
// success. It returns the exit code: 0 on success, 1 on failure.
func Main(args []string, stderr io.Writer) int {
	quiet, verbose := false, false
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i+1:]...)
			break
		}
		switch a {
		case "-q", "--quiet":
			quiet = true
		case "-v", "--verbose":
			verbose = true
		case "-r", "--remove":
			fmt.Fprintln(stderr, "modprobe: -r is not supported: modules are never removed in an msb guest")
			return 1
		default:
			if strings.HasPrefix(a, "-") && a != "-" {
				fmt.Fprintf(stderr, "modprobe: option %s is not supported (msb's modprobe knows -q, -v and --)\n", a)
				return 1
			}
			rest = append(rest, a)
		}
	}
	if len(rest) == 0 {
		fmt.Fprintln(stderr, "modprobe: usage: modprobe [-q] [-v] [--] NAME [PARAM=VALUE ...]")
		return 1
	}
	m := newModprober(filepath.Join(protocol.ModulesGuestDir, KernelRelease()))
	if verbose {
		m.logf = func(format string, a ...any) { fmt.Fprintf(stderr, "modprobe: "+format+"\n", a...) }
	}
	err := m.probe(rest[0], strings.Join(rest[1:], " "))
	kmsg(err, rest[0])
	if err != nil {
		if !quiet {
			fmt.Fprintf(stderr, "modprobe: %v\n", err)
		}
		return 1
	}
	return 0
}

// kmsg notes the outcome in the kernel log (dmesg), where the usermode
// helper's output would otherwise be lost.
func kmsg(err error, name string) {
	f, ferr := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if ferr != nil {
		return
	}
	defer f.Close()
	if err != nil {
		fmt.Fprintf(f, "<4>msb-modprobe: %s: %v\n", name, err)
	} else {
		fmt.Fprintf(f, "<6>msb-modprobe: %s: ok\n", name)
	}
}

// modprober resolves and loads modules from one module tree.
type modprober struct {
	dir string // /lib/modules/<release>
	// load loads the module file p (absolute) with params; EEXIST is
	// success. loaded reports whether a module (canonical name) is in the
	// kernel already. Seams for tests.
	load   func(p, params string) error
	loaded func(name string) bool
	logf   func(format string, a ...any)

	indexed  bool
	dep      map[string]depLine // canonical name → its modules.dep line
	builtin  map[string]bool
	aliases  []aliasLine
	softdeps map[string]softdepLine
}

type depLine struct {
	rel  string   // the module's path relative to dir
	deps []string // its dependencies' paths, the one to load last first
}

type aliasLine struct{ pattern, module string } // pattern normalised

type softdepLine struct{ pre, post []string }

func newModprober(dir string) *modprober {
	return &modprober{
		dir:    dir,
		load:   loadModuleParams,
		loaded: moduleLoaded,
		logf:   func(string, ...any) {},
	}
}

// moduleLoaded reports whether the kernel has the module (loaded, or being
// loaded); built-in modules have no initstate.
func moduleLoaded(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/module", name, "initstate"))
	return err == nil
}

// canonical turns a module file or name into its name: "crc32c-intel.ko.xz"
// → "crc32c_intel".
func canonical(s string) string {
	s = path.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_")
}

// normalizeAlias is kmod's alias_normalize: '-' becomes '_' except inside a
// [...] bracket expression, so "rtnl-link-dummy" and "rtnl_link_dummy" are
// one name.
func normalizeAlias(s string) string {
	b := []byte(s)
	inBracket := false
	for i, c := range b {
		switch {
		case c == '[':
			inBracket = true
		case c == ']':
			inBracket = false
		case c == '-' && !inBracket:
			b[i] = '_'
		}
	}
	return string(b)
}

// index reads modules.dep, modules.alias, modules.softdep, modules.builtin
// and the aliases of built-in modules (modules.builtin.modinfo). Only
// modules.dep is required.
func (m *modprober) index() error {
	if m.indexed {
		return nil
	}
	m.dep = map[string]depLine{}
	m.builtin = map[string]bool{}
	m.softdeps = map[string]softdepLine{}
	b, err := os.ReadFile(filepath.Join(m.dir, "modules.dep"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no module tree for kernel %s in %s (the VM has no %s share?)", path.Base(m.dir), path.Dir(m.dir), protocol.ModulesShareTag)
		}
		return err
	}
	eachLine(b, func(l string) {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			m.dep[canonical(k)] = depLine{rel: strings.TrimSpace(k), deps: strings.Fields(v)}
		}
	})
	if b, err := os.ReadFile(filepath.Join(m.dir, "modules.alias")); err == nil {
		eachLine(b, func(l string) {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "alias" {
				m.aliases = append(m.aliases, aliasLine{normalizeAlias(f[1]), canonical(f[2])})
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(m.dir, "modules.softdep")); err == nil {
		eachLine(b, func(l string) {
			f := strings.Fields(l)
			if len(f) < 2 || f[0] != "softdep" {
				return
			}
			var s softdepLine
			var to *[]string
			for _, w := range f[2:] {
				switch w {
				case "pre:":
					to = &s.pre
				case "post:":
					to = &s.post
				default:
					if to != nil {
						*to = append(*to, w)
					}
				}
			}
			m.softdeps[canonical(f[1])] = s
		})
	}
	if b, err := os.ReadFile(filepath.Join(m.dir, "modules.builtin")); err == nil {
		eachLine(b, func(l string) { m.builtin[canonical(l)] = true })
	}
	m.indexed = true
	return nil
}

// builtinAliases reads the aliases of built-in modules from
// modules.builtin.modinfo ("name.alias=value" strings, NUL separated).
func (m *modprober) builtinAliases() []aliasLine {
	b, err := os.ReadFile(filepath.Join(m.dir, "modules.builtin.modinfo"))
	if err != nil {
		return nil
	}
	var out []aliasLine
	for _, kv := range bytes.Split(b, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		if mod, key, ok := strings.Cut(k, "."); ok && key == "alias" {
			out = append(out, aliasLine{normalizeAlias(v), canonical(mod)})
		}
	}
	return out
}

func eachLine(b []byte, f func(string)) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			f(l)
		}
	}
}

func matchAliases(list []aliasLine, name string) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range list {
		if seen[a.module] {
			continue
		}
		ok := a.pattern == name
		if !ok && strings.ContainsAny(a.pattern, "*?[\\") {
			ok, _ = path.Match(a.pattern, name)
		}
		if ok {
			seen[a.module] = true
			out = append(out, a.module)
		}
	}
	return out
}

// resolve returns the modules NAME stands for; builtin is true when the
// kernel has it built in (nothing to load).
func (m *modprober) resolve(name string) (mods []string, builtin bool, err error) {
	if err := m.index(); err != nil {
		return nil, false, err
	}
	n := canonical(name)
	if _, ok := m.dep[n]; ok {
		return []string{n}, false, nil
	}
	if m.builtin[n] {
		return nil, true, nil
	}
	if mods := matchAliases(m.aliases, normalizeAlias(name)); len(mods) > 0 {
		return mods, false, nil
	}
	if len(matchAliases(m.builtinAliases(), normalizeAlias(name))) > 0 {
		return nil, true, nil
	}
	return nil, false, fmt.Errorf("module %s not found in %s", name, m.dir)
}

// probe loads what name stands for. With several modules matching an
// alias it loads them all; it fails only when none could be loaded.
func (m *modprober) probe(name, params string) error {
	mods, builtin, err := m.resolve(name)
	if err != nil {
		return err
	}
	if builtin {
		m.logf("%s is built into the kernel", name)
		return nil
	}
	var errs []error
	done := map[string]bool{}
	for _, mod := range mods {
		if err := m.loadWithDeps(mod, params, done); err != nil {
			errs = append(errs, err)
			continue
		}
		return nil
	}
	return errors.Join(errs...)
}

// loadWithDeps loads mod's soft pre-dependencies (best effort), its
// dependencies (modules.dep, in load order), mod itself, then its soft
// post-dependencies (best effort).
func (m *modprober) loadWithDeps(mod, params string, done map[string]bool) error {
	if done[mod] {
		return nil
	}
	done[mod] = true
	if m.loaded(mod) {
		m.logf("%s is loaded already", mod)
		return nil
	}
	line, ok := m.dep[mod]
	if !ok {
		return fmt.Errorf("module %s not in %s/modules.dep", mod, m.dir)
	}
	sd := m.softdeps[mod]
	m.soft(sd.pre, done)
	for i := len(line.deps) - 1; i >= 0; i-- {
		d := line.deps[i]
		dn := canonical(d)
		if done[dn] || m.loaded(dn) {
			continue
		}
		done[dn] = true
		if err := m.loadFile(d, ""); err != nil {
			return fmt.Errorf("%s (dependency of %s): %w", dn, mod, err)
		}
	}
	if err := m.loadFile(line.rel, params); err != nil {
		return fmt.Errorf("%s: %w", mod, err)
	}
	m.soft(sd.post, done)
	return nil
}

func (m *modprober) soft(names []string, done map[string]bool) {
	for _, s := range names {
		mods, builtin, err := m.resolve(s)
		if err != nil || builtin {
			continue
		}
		for _, mod := range mods {
			if err := m.loadWithDeps(mod, "", done); err != nil {
				m.logf("soft dependency %s: %v", s, err)
			}
		}
	}
}

func (m *modprober) loadFile(rel, params string) error {
	p := rel
	if !filepath.IsAbs(p) {
		p = filepath.Join(m.dir, rel)
	}
	m.logf("insmod %s %s", p, params)
	return m.load(p, params)
}

// loadModuleParams loads a module file with finit_module; compressed files
// are left to the kernel (MODULE_INIT_COMPRESSED_FILE, which needs
// CONFIG_MODULE_DECOMPRESS). EEXIST is success.
func loadModuleParams(p, params string) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	flags := 0
	switch filepath.Ext(p) {
	case ".xz", ".zst", ".gz":
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(fd, params, flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}
