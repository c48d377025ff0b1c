package guest

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Modules is the ordered list of top-level kernel modules the agent needs; their
// dependencies are resolved from each module's .modinfo. Modules built into the kernel
// are skipped.
//
//   - virtio_mmio: the transport of every device on qemu -M microvm
//   - virtio_console: virtio-serial, the agent channel (port "msb.agent")
//   - virtio_blk: disks (container rootfs images, block mounts)
//   - 9pnet_virtio, 9p: shared directories (no virtiofsd on Debian 12)
//   - crc32c_generic: ext4/jbd2 only name it as a soft dependency ("crypto-crc32c"),
//     without it mounting ext4 fails with "Cannot load crc32c driver"
//   - ext4: filesystem of block devices
//   - overlay: writable layers over read-only roots
//   - virtio_rng: guest entropy when the VMM adds a virtio-rng device
//   - virtio_net: NICs joined to the container's network namespace on the host
var Modules = []string{
	"virtio_mmio",
	"virtio_console",
	"virtio_blk",
	"9pnet_virtio",
	"9p",
	"crc32c_generic",
	"ext4",
	"overlay",
	"virtio_rng",
	"virtio_net",
}

// kmod is one module to put into the initramfs.
type kmod struct {
	name    string   // canonical name (dashes as underscores)
	rel     string   // path relative to lib/modules/<ver>, as a plain .ko
	depends []string // hard dependencies (canonical names), from .modinfo depends=
	softPre []string // softdep pre: entries that name real modules
	data    []byte   // uncompressed .ko
}

// modName canonicalises a module name or file name: "crc32c-intel.ko.xz" → "crc32c_intel".
func modName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// plainKo turns a (possibly compressed) module path into its .ko path.
func plainKo(rel string) string {
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(rel, ".ko"+ext) {
			return strings.TrimSuffix(rel, ext)
		}
	}
	return rel
}

// moduleTree indexes the modules of one kernel.
type moduleTree struct {
	dir     string            // .../lib/modules/<ver>
	files   map[string]string // name → path relative to dir (as shipped, maybe compressed)
	builtin map[string]bool
}

func loadModuleTree(dir string) (*moduleTree, error) {
	t := &moduleTree{dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.Contains(d.Name(), ".ko") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if plainKo(rel) != rel || strings.HasSuffix(rel, ".ko") {
			t.files[modName(rel)] = filepath.ToSlash(rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing modules: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" {
				t.builtin[modName(line)] = true
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return t, nil
}

// modinfo returns the key=value strings of a module's .modinfo section.
func modinfo(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("not an ELF object: %w", err)
	}
	return elfModinfo(f)
}

func elfModinfo(f *elf.File) ([]string, error) {
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section")
	}
	b, err := s.Data()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, kv := range bytes.Split(b, []byte{0}) {
		if len(kv) > 0 {
			out = append(out, string(kv))
		}
	}
	return out, nil
}

// readModinfo returns the .modinfo strings of the module file p. A plain .ko
// is read through its section headers only; a compressed one is decompressed.
func readModinfo(ctx context.Context, p string) ([]string, error) {
	if plainKo(p) == p {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		ef, err := elf.NewFile(f)
		if err != nil {
			return nil, fmt.Errorf("not an ELF object: %w", err)
		}
		return elfModinfo(ef)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	ko, _, err := decompress(ctx, raw)
	if err != nil {
		return nil, err
	}
	return modinfo(ko)
}

// parseModinfo extracts the hard dependencies and the softdep "pre:" names.
func parseModinfo(info []string) (depends, softPre []string) {
	for _, kv := range info {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					depends = append(depends, modName(d))
				}
			}
		case "softdep":
			pre := false
			for _, w := range strings.Fields(v) {
				switch w {
				case "pre:":
					pre = true
				case "post:":
					pre = false
				default:
					if pre {
						softPre = append(softPre, w)
					}
				}
			}
		}
	}
	return depends, softPre
}

// resolve loads the named modules and their dependencies and returns them in load
// order (dependencies first; otherwise in the order asked). Built-in modules are
// skipped; soft "pre:" dependencies are honoured when they name a module that exists
// (aliases such as "crypto-crc32c" are not resolved).
func (t *moduleTree) resolve(ctx context.Context, names []string) ([]*kmod, error) {
	loaded := map[string]*kmod{}
	state := map[string]int{} // 1 visiting, 2 done
	var order []*kmod
	var visit func(name string, chain []string, soft bool) error
	visit = func(name string, chain []string, soft bool) error {
		name = modName(name)
		switch state[name] {
		case 2:
			return nil
		case 1:
			if soft {
				return nil
			}
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		rel, ok := t.files[name]
		if !ok {
			if t.builtin[name] || soft {
				state[name] = 2
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("module %s (needed by %s) is neither in %s nor built in", name, strings.Join(chain, " -> "), t.dir)
			}
			return fmt.Errorf("module %s is neither in %s nor built in", name, t.dir)
		}
		state[name] = 1
		raw, err := os.ReadFile(filepath.Join(t.dir, rel))
		if err != nil {
			return err
		}
		ko, _, err := decompress(ctx, raw)
		if err != nil {
			return fmt.Errorf("module %s: %w", rel, err)
		}
		info, err := modinfo(ko)
		if err != nil {
			return fmt.Errorf("module %s: %w", rel, err)
		}
		m := &kmod{name: name, rel: plainKo(rel), data: ko}
		m.depends, m.softPre = parseModinfo(info)
		next := append(append([]string(nil), chain...), name)
		for _, s := range m.softPre {
			if _, exists := t.files[modName(s)]; exists {
				if err := visit(s, next, true); err != nil {
					return err
				}
			}
		}
		for _, d := range m.depends {
			if err := visit(d, next, false); err != nil {
				return err
			}
		}
		state[name] = 2
		loaded[name] = m
		order = append(order, m)
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil, false); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modulesDep renders modules.dep as depmod does: each module followed by all of its
// (transitive, hard) dependencies, the one to load last first.
func modulesDep(mods []*kmod) []byte {
	byName := map[string]*kmod{}
	pos := map[string]int{}
	for i, m := range mods {
		byName[m.name] = m
		pos[m.name] = i
	}
	var b bytes.Buffer
	for _, m := range mods {
		seen := map[string]bool{}
		var walk func(n string)
		walk = func(n string) {
			d, ok := byName[n]
			if !ok || seen[n] {
				return
			}
			seen[n] = true
			for _, dd := range d.depends {
				walk(dd)
			}
		}
		for _, d := range m.depends {
			walk(d)
		}
		deps := make([]string, 0, len(seen))
		for n := range seen {
			deps = append(deps, n)
		}
		// Reverse load order: modprobe loads from the end of the list.
		sort.Slice(deps, func(i, j int) bool { return pos[deps[i]] > pos[deps[j]] })
		b.WriteString(m.rel + ":")
		for _, n := range deps {
			b.WriteString(" " + byName[n].rel)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}
