package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
)

// ModulesDir is the directory of OutDir that holds the kernel's whole module
// tree, as modules/<release>/, shared read-only with every qemu VM and
// mounted by the agent at /lib/modules (docs/guest-image.md).
const ModulesDir = "modules"

// Index files Build writes into the module tree, in the formats of depmod, so
// that any kmod could read them too.
const (
	ModulesDepFile     = "modules.dep"
	ModulesAliasFile   = "modules.alias"
	ModulesSoftdepFile = "modules.softdep"
)

// ModuleTree describes the module tree of an image (Manifest.ModuleTree).
type ModuleTree struct {
	Dir      string `json:"dir"` // relative to OutDir: modules/<release>
	Modules  int    `json:"modules"`
	Aliases  int    `json:"aliases"`
	Softdeps int    `json:"softdeps"`
	Bytes    int64  `json:"bytes"` // sum of the regular files' sizes
}

// modEntry is one module of the whole tree, as indexed for modules.dep,
// modules.alias and modules.softdep.
type modEntry struct {
	name    string   // canonical name
	rel     string   // path relative to lib/modules/<ver>, as shipped (maybe compressed)
	depends []string // hard dependencies (canonical names)
	aliases []string // alias= values, verbatim
	softdep string   // softdep= value, verbatim ("pre: a b post: c")
}

// indexAll reads the .modinfo of every module of t, in parallel, and returns
// the modules in modules.order order (then by path).
func (t *moduleTree) indexAll(ctx context.Context) ([]*modEntry, error) {
	order := map[string]int{}
	if b, err := os.ReadFile(filepath.Join(t.dir, "modules.order")); err == nil {
		for i, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				order[modName(l)] = i + 1
			}
		}
	}
	var entries []*modEntry
	for name, rel := range t.files {
		entries = append(entries, &modEntry{name: name, rel: rel})
	}
	sort.Slice(entries, func(i, j int) bool {
		oi, oj := order[entries[i].name], order[entries[j].name]
		if (oi == 0) != (oj == 0) {
			return oi != 0
		}
		if oi != oj {
			return oi < oj
		}
		return entries[i].rel < entries[j].rel
	})
	work := make(chan *modEntry)
	errs := make([]error, runtime.NumCPU())
	var wg sync.WaitGroup
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range work {
				if errs[w] != nil || ctx.Err() != nil {
					continue
				}
				info, err := readModinfo(ctx, filepath.Join(t.dir, e.rel))
				if err != nil {
					errs[w] = fmt.Errorf("module %s: %w", e.rel, err)
					continue
				}
				e.depends, _ = parseModinfo(info)
				for _, kv := range info {
					k, v, _ := strings.Cut(kv, "=")
					switch {
					case k == "alias" && v != "":
						e.aliases = append(e.aliases, v)
					case k == "softdep" && strings.TrimSpace(v) != "":
						e.softdep = strings.Join(strings.Fields(v), " ")
					}
				}
			}
		}()
	}
	for _, e := range entries {
		work <- e
	}
	close(work)
	wg.Wait()
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return nil, err
	}
	return entries, nil
}

// treeIndexes renders modules.dep, modules.alias and modules.softdep of the
// whole tree. Dependencies that the tree lacks are left out and returned as
// warnings; a dependency cycle is broken where it is found, with a warning.
func treeIndexes(entries []*modEntry) (dep, alias, softdep []byte, warnings []string) {
	byName := map[string]*modEntry{}
	for _, e := range entries {
		byName[e.name] = e
	}
	// Topological order (dependencies first) for modulesDep.
	state := map[string]int{}
	var topo []*kmod
	var visit func(e *modEntry, chain []string)
	visit = func(e *modEntry, chain []string) {
		switch state[e.name] {
		case 1:
			warnings = append(warnings, fmt.Sprintf("dependency cycle: %s -> %s", strings.Join(chain, " -> "), e.name))
			return
		case 2:
			return
		}
		state[e.name] = 1
		var deps []string
		for _, d := range e.depends {
			de, ok := byName[d]
			if !ok {
				warnings = append(warnings, fmt.Sprintf("module %s depends on %s, which is not in the tree", e.name, d))
				continue
			}
			if state[d] == 1 {
				warnings = append(warnings, fmt.Sprintf("dependency cycle: %s -> %s -> %s", strings.Join(chain, " -> "), e.name, d))
				continue
			}
			visit(de, append(chain, e.name))
			deps = append(deps, d)
		}
		state[e.name] = 2
		topo = append(topo, &kmod{name: e.name, rel: e.rel, depends: deps})
	}
	for _, e := range entries {
		visit(e, nil)
	}
	// modulesDep writes lines in the order of its input: keep the tree's.
	lines := bytes.Split(modulesDep(topo), []byte("\n"))
	lineOf := map[string][]byte{}
	for i, m := range topo {
		lineOf[m.name] = lines[i]
	}
	var d, a, s bytes.Buffer
	for _, e := range entries {
		d.Write(lineOf[e.name])
		d.WriteByte('\n')
	}
	a.WriteString("# Aliases extracted from modules themselves.\n")
	for _, e := range entries {
		for _, al := range e.aliases {
			fmt.Fprintf(&a, "alias %s %s\n", al, e.name)
		}
	}
	s.WriteString("# Soft dependencies extracted from modules themselves.\n")
	for _, e := range entries {
		if e.softdep != "" {
			fmt.Fprintf(&s, "softdep %s %s\n", e.name, e.softdep)
		}
	}
	return d.Bytes(), a.Bytes(), s.Bytes(), warnings
}

// installModuleTree writes the index files into modDir (the unpacked
// lib/modules/<ver>, inside OutDir's work dir) and moves it to
// OutDir/modules/<ver>, replacing an older tree of the same release in one
// rename and removing the trees of other releases. The module files stay as
// the package ships them.
func installModuleTree(ctx context.Context, t *moduleTree, outDir, ver string, logf func(string, ...any)) (*ModuleTree, error) {
	entries, err := t.indexAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("guest: indexing the modules of %s: %w", ver, err)
	}
	dep, alias, softdep, warnings := treeIndexes(entries)
	for _, w := range warnings {
		logf("modules: warning: %s", w)
	}
	info := &ModuleTree{Dir: filepath.ToSlash(filepath.Join(ModulesDir, ver)), Modules: len(entries)}
	for _, e := range entries {
		info.Aliases += len(e.aliases)
		if e.softdep != "" {
			info.Softdeps++
		}
	}
	for name, b := range map[string][]byte{ModulesDepFile: dep, ModulesAliasFile: alias, ModulesSoftdepFile: softdep} {
		if err := os.WriteFile(filepath.Join(t.dir, name), b, 0o644); err != nil {
			return nil, fmt.Errorf("guest: module tree: %w", err)
		}
	}
	err = filepath.WalkDir(t.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			info.Bytes += fi.Size()
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guest: module tree: %w", err)
	}
	parent := filepath.Join(outDir, ModulesDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("guest: module tree: %w", err)
	}
	if err := os.Chmod(t.dir, 0o755); err != nil {
		return nil, err
	}
	dst := filepath.Join(parent, ver)
	old, err := os.MkdirTemp(parent, ".old-")
	if err != nil {
		return nil, fmt.Errorf("guest: module tree: %w", err)
	}
	defer os.RemoveAll(old)
	if err := os.Rename(dst, filepath.Join(old, ver)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("guest: module tree: %w", err)
	}
	if err := os.Rename(t.dir, dst); err != nil {
		return nil, fmt.Errorf("guest: module tree: %w", err)
	}
	t.dir = dst
	// Trees of other releases belong to replaced kernels.
	others, _ := os.ReadDir(parent)
	for _, o := range others {
		if o.Name() != ver && !strings.HasPrefix(o.Name(), ".old-") {
			if err := os.Rename(filepath.Join(parent, o.Name()), filepath.Join(old, o.Name())); err != nil {
				logf("modules: cannot remove old tree %s: %v", o.Name(), err)
			}
		}
	}
	logf("module tree: %d modules, %d aliases, %d MiB in %s", info.Modules, info.Aliases, info.Bytes>>20, dst)
	return info, nil
}
