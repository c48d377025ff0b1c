package guest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// fakeModule compiles a relocatable ELF object whose .modinfo holds the given strings,
// like a real .ko.
func fakeModule(t *testing.T, dir, name string, info ...string) []byte {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not installed")
	}
	var src strings.Builder
	info = append([]string{"name=" + strings.ReplaceAll(name, "-", "_")}, info...)
	for i, s := range info {
		fmt.Fprintf(&src, "static const char modinfo_%d[] __attribute__((section(\".modinfo\"), used, aligned(1))) = %q;\n", i, s)
	}
	src.WriteString("int init_module(void) { return 0; }\n")
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	o := filepath.Join(dir, name+".o")
	if out, err := exec.Command(gcc, "-c", "-o", o, c).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	b, err := os.ReadFile(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeModuleTree lays out lib/modules/<ver> with:
//
//	top   depends=mid,leaf-dash (softdep pre: soft crypto-alias)
//	mid   depends=leaf_dash,builtinmod       (shipped as .ko.xz)
//	leaf-dash                                 (file name with a dash)
//	soft                                      (soft pre-dependency of top)
//	other depends=leaf_dash
//	broken depends=missing
//	cyc1 depends=cyc2, cyc2 depends=cyc1
//	builtinmod is in modules.builtin
func fakeModuleTree(t *testing.T) string {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "lib/modules/6.0.0-test")
	write := func(rel string, data []byte) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := t.TempDir()
	write("kernel/drivers/top.ko", fakeModule(t, src, "top", "depends=mid,leaf-dash", "softdep=pre: soft crypto-alias post: other", "license=GPL"))
	var xzb bytes.Buffer
	w, _ := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&xzb)
	w.Write(fakeModule(t, src, "mid", "depends=leaf_dash,builtinmod"))
	w.Close()
	write("kernel/lib/mid.ko.xz", xzb.Bytes())
	write("kernel/lib/leaf-dash.ko", fakeModule(t, src, "leaf-dash", "depends="))
	write("kernel/lib/soft.ko", fakeModule(t, src, "soft", "depends="))
	write("kernel/fs/other.ko", fakeModule(t, src, "other", "depends=leaf_dash"))
	write("kernel/fs/broken.ko", fakeModule(t, src, "broken", "depends=missing"))
	write("kernel/fs/cyc1.ko", fakeModule(t, src, "cyc1", "depends=cyc2"))
	write("kernel/fs/cyc2.ko", fakeModule(t, src, "cyc2", "depends=cyc1"))
	write("modules.builtin", []byte("kernel/fs/builtinmod.ko\nkernel/fs/alsobuiltin.ko\n"))
	return dir
}

func TestParseModinfo(t *testing.T) {
	dep, soft := parseModinfo([]string{"license=GPL", "depends=a,b-c,,d", "softdep=pre: x y post: z", "vermagic=6.1 SMP"})
	if want := []string{"a", "b_c", "d"}; !reflect.DeepEqual(dep, want) {
		t.Errorf("depends = %q, want %q", dep, want)
	}
	if want := []string{"x", "y"}; !reflect.DeepEqual(soft, want) {
		t.Errorf("softdep pre = %q, want %q", soft, want)
	}
	if dep, _ := parseModinfo([]string{"depends="}); len(dep) != 0 {
		t.Errorf("empty depends = %q", dep)
	}
}

func TestModinfoFromELF(t *testing.T) {
	ko := fakeModule(t, t.TempDir(), "x", "depends=y,z", "alias=foo")
	info, err := modinfo(ko)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"name=x", "depends=y,z", "alias=foo"}
	if !reflect.DeepEqual(info, want) {
		t.Errorf("modinfo = %q, want %q", info, want)
	}
	if _, err := modinfo([]byte("not elf")); err == nil {
		t.Error("non-ELF accepted")
	}
}

func names(mods []*kmod) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.rel)
	}
	return out
}

func TestResolveOrder(t *testing.T) {
	tree, err := loadModuleTree(fakeModuleTree(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mods, err := tree.resolve(ctx, []string{"top", "alsobuiltin", "other"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/lib/soft.ko",
		"kernel/lib/leaf-dash.ko",
		"kernel/lib/mid.ko", // decompressed, renamed
		"kernel/drivers/top.ko",
		"kernel/fs/other.ko",
	}
	if got := names(mods); !reflect.DeepEqual(got, want) {
		t.Errorf("order = %q\nwant    %q", got, want)
	}
	for _, m := range mods {
		if !bytes.HasPrefix(m.data, []byte("\x7fELF")) {
			t.Errorf("%s: data is not a plain ELF", m.rel)
		}
	}
	dep := string(modulesDep(mods))
	wantDep := "kernel/lib/soft.ko:\n" +
		"kernel/lib/leaf-dash.ko:\n" +
		"kernel/lib/mid.ko: kernel/lib/leaf-dash.ko\n" +
		"kernel/drivers/top.ko: kernel/lib/mid.ko kernel/lib/leaf-dash.ko\n" +
		"kernel/fs/other.ko: kernel/lib/leaf-dash.ko\n"
	if dep != wantDep {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", dep, wantDep)
	}

	// Asking for a dependency first does not change the relative order.
	mods, err = tree.resolve(ctx, []string{"leaf_dash", "mid"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(mods), []string{"kernel/lib/leaf-dash.ko", "kernel/lib/mid.ko"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order = %q, want %q", got, want)
	}
}

func TestResolveErrors(t *testing.T) {
	tree, err := loadModuleTree(fakeModuleTree(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for mod, want := range map[string]string{
		"nosuch": "module nosuch is neither",
		"broken": "module missing (needed by broken) is neither",
		"cyc1":   "cycle: cyc1 -> cyc2 -> cyc1",
	} {
		_, err := tree.resolve(ctx, []string{mod})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("resolve(%s): err = %v, want %q", mod, err, want)
		}
	}
	if mods, err := tree.resolve(ctx, []string{"builtinmod"}); err != nil || len(mods) != 0 {
		t.Errorf("builtin module: %v %v", names(mods), err)
	}
}

func TestTreeIndexes(t *testing.T) {
	dir := fakeModuleTree(t)
	src := t.TempDir()
	write := func(rel string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, rel), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Aliases and a soft dependency; cyc1/cyc2 and broken stay in the tree
	// and must only give warnings.
	write("kernel/lib/leaf-dash.ko", fakeModule(t, src, "leaf-dash", "depends=", "alias=rtnl-link-leaf", "alias=fs-leaf*"))
	write("kernel/fs/other.ko", fakeModule(t, src, "other", "depends=leaf_dash", "alias=net-pf-7", "softdep=pre:  soft   post: mid"))
	write("modules.order", []byte("kernel/fs/other.ko\nkernel/drivers/top.ko\n"))
	tree, err := loadModuleTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := tree.indexAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dep, alias, softdep, warnings := treeIndexes(entries)
	wantDep := "kernel/fs/other.ko: kernel/lib/leaf-dash.ko\n" + // modules.order first
		"kernel/drivers/top.ko: kernel/lib/mid.ko.xz kernel/lib/leaf-dash.ko\n" +
		"kernel/fs/broken.ko:\n" +
		"kernel/fs/cyc1.ko: kernel/fs/cyc2.ko\n" +
		"kernel/fs/cyc2.ko:\n" +
		"kernel/lib/leaf-dash.ko:\n" +
		"kernel/lib/mid.ko.xz: kernel/lib/leaf-dash.ko\n" + // as shipped, compressed
		"kernel/lib/soft.ko:\n"
	if string(dep) != wantDep {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", dep, wantDep)
	}
	wantAlias := "# Aliases extracted from modules themselves.\n" +
		"alias net-pf-7 other\n" +
		"alias rtnl-link-leaf leaf_dash\n" +
		"alias fs-leaf* leaf_dash\n"
	if string(alias) != wantAlias {
		t.Errorf("modules.alias:\n%s\nwant:\n%s", alias, wantAlias)
	}
	wantSoft := "# Soft dependencies extracted from modules themselves.\n" +
		"softdep other pre: soft post: mid\n" +
		"softdep top pre: soft crypto-alias post: other\n"
	if string(softdep) != wantSoft {
		t.Errorf("modules.softdep:\n%s\nwant:\n%s", softdep, wantSoft)
	}
	w := strings.Join(warnings, "\n")
	if !strings.Contains(w, "broken depends on missing") || !strings.Contains(w, "cycle") {
		t.Errorf("warnings: %q", warnings)
	}
}

func TestInstallModuleTree(t *testing.T) {
	dir := fakeModuleTree(t)
	tree, err := loadModuleTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	// An older tree of the same release and one of another release.
	for _, d := range []string{"modules/6.0.0-test/kernel", "modules/5.0.0-old/kernel"} {
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	info, err := installModuleTree(context.Background(), tree, out, "6.0.0-test", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if info.Dir != "modules/6.0.0-test" || info.Modules != 8 || info.Bytes == 0 || info.Softdeps != 1 {
		t.Errorf("info = %+v", info)
	}
	ents, _ := os.ReadDir(filepath.Join(out, "modules"))
	if len(ents) != 1 || ents[0].Name() != "6.0.0-test" {
		t.Errorf("modules dir holds %v, want only 6.0.0-test", ents)
	}
	for _, f := range []string{"modules.dep", "modules.alias", "modules.softdep", "modules.builtin", "kernel/lib/mid.ko.xz", "kernel/drivers/top.ko"} {
		if _, err := os.Stat(filepath.Join(out, "modules/6.0.0-test", f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("the unpacked tree was copied, not moved")
	}
}
