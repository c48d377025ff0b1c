package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Options says what to build the guest image from and where to put it.
type Options struct {
	KernelDeb string // path to a linux-image-*.deb; "" = download the distribution's current kernel with apt-get
	KernelDir string // a kernel of msb's own (hack/build-kernel.sh: vmlinux, kernel.release, source); overrides KernelDeb
	AgentPath string // static msb-agent binary → /init in the initramfs
	RuncPath  string // static runc → /sbin/runc (Runtime runc)
	// Runtime is the guest's OCI runtime: RuntimeRunc ("" too) or
	// RuntimeCrun. The root gets it at /sbin/<name> and names it in
	// GuestRuntimeFile.
	Runtime  string
	CrunPath string    // crun (dynamically linked: its libraries come along) → /sbin/crun (Runtime crun)
	OutDir   string    // e.g. /var/lib/msb; gets vmlinux, vmlinuz, initrd.cpio, kernel.release, manifest.json
	Progress io.Writer // human progress lines; nil = silent
}

// Image lists the files Build wrote.
type Image struct {
	Vmlinux       string // uncompressed ELF kernel with a PVH entry note (qemu -M microvm -kernel)
	Bzimage       string // the package's original compressed kernel; "" for a kernel of msb's own
	Initrd        string // uncompressed newc initramfs; "" when the root is RootDisk
	RootDisk      string // read-only ext4 guest root (kernels of msb's own); "" when the root is Initrd
	KrunRoot      string // libkrun guest root directory (agent as /init, runc)
	KernelRelease string // e.g. "6.1.0-56-amd64"
	Modules       string // OutDir/modules: holds <release>/, the whole module tree with its index files; "" when all is built in
}

// Names of the files in OutDir and of the configuration files inside the initramfs.
const (
	VmlinuxFile       = "vmlinux"
	BzimageFile       = "vmlinuz"
	InitrdFile        = "initrd.cpio"
	KernelReleaseFile = "kernel.release"
	ManifestFile      = "manifest.json"

	// GuestModulesList holds the absolute guest paths of the modules to load, one per
	// line, dependencies first.
	GuestModulesList = "/etc/msb/modules"
	// GuestKernelRelease holds the kernel release the modules belong to.
	GuestKernelRelease = "/etc/msb/kernel-release"
)

// Manifest describes a built image (OutDir/manifest.json).
type Manifest struct {
	Version       int      `json:"version"`
	KernelRelease string   `json:"kernel_release"`
	KernelPackage string   `json:"kernel_package"`
	Compression   string   `json:"kernel_compression"`
	Modules       []string `json:"modules"` // load order, paths relative to /lib/modules/<release>
	Agent         string   `json:"agent_sha256"`
	Runc          string   `json:"runc_sha256,omitempty"` // runc images
	// Runtime is the guest's OCI runtime (RuntimeRunc or RuntimeCrun),
	// RuntimeSHA its binary's hash, RuntimeLibs the guest paths of the
	// loader and libraries it came with.
	Runtime     string            `json:"oci_runtime"`
	RuntimeSHA  string            `json:"oci_runtime_sha256"`
	RuntimeLibs []string          `json:"oci_runtime_libs,omitempty"`
	Files       map[string]string `json:"files"` // OutDir file → sha256
	// ModuleTree is the kernel's whole module tree in OutDir (ModulesDir),
	// with the index files Build generated.
	ModuleTree *ModuleTree `json:"module_tree,omitempty"`
	Built      time.Time   `json:"built"`
}

// Build makes the guest image in o.OutDir: it unpacks the kernel package, extracts
// the uncompressed vmlinux from the bzImage (checking it is PVH-bootable), collects
// Modules and their dependencies and writes the initramfs.
func Build(ctx context.Context, o Options) (*Image, error) {
	if o.OutDir == "" || o.AgentPath == "" {
		return nil, errors.New("guest: OutDir and AgentPath are required")
	}
	logf := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	agent, err := readStaticExe(o.AgentPath, "agent")
	if err != nil {
		return nil, err
	}
	rt, err := loadRuntime(o)
	if err != nil {
		return nil, err
	}
	logf("OCI runtime: %s %s", rt.name, strings.Join(rt.libs, " "))

	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	// Unpack next to the output rather than in /tmp: a kernel package unpacks to
	// some 400 MiB, too much for a small tmpfs.
	work, err := os.MkdirTemp(o.OutDir, ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	k, err := loadKernel(ctx, o, work, logf)
	if err != nil {
		return nil, err
	}
	ver := k.release
	var mods []*kmod
	var relMods []string
	if k.tree != nil {
		if mods, err = k.tree.resolve(ctx, Modules); err != nil {
			return nil, fmt.Errorf("guest: kernel %s: %w", ver, err)
		}
		for _, m := range mods {
			relMods = append(relMods, m.rel)
		}
		logf("modules (load order): %s", strings.Join(relMods, " "))
	}

	type output struct {
		name string
		data []byte
	}
	outputs := []output{{VmlinuxFile, k.vmlinux}, {KernelReleaseFile, []byte(ver + "\n")}}
	entries := rootEntries(ver, agent, rt.entries, mods, k.modDir())
	img := &Image{Vmlinux: filepath.Join(o.OutDir, VmlinuxFile), KernelRelease: ver}
	if k.tree == nil {
		// Virtio-blk and ext4 are built in: the root is a shared disk.
		size, err := writeRootDisk(ctx, entries, work, o.OutDir)
		if err != nil {
			return nil, err
		}
		logf("root disk %s: %d entries, %d MiB, read-only ext4", RootDiskFile, len(entries), size>>20)
		img.RootDisk = filepath.Join(o.OutDir, RootDiskFile)
		if err := removeStale(o.OutDir, InitrdFile); err != nil {
			return nil, err
		}
	} else {
		initrd, err := initramfs(entries)
		if err != nil {
			return nil, err
		}
		logf("initramfs: %d entries, %d MiB", initrd.entries, len(initrd.data)>>20)
		outputs = append(outputs, output{InitrdFile, initrd.data})
		img.Initrd = filepath.Join(o.OutDir, InitrdFile)
		if err := removeStale(o.OutDir, RootDiskFile); err != nil {
			return nil, err
		}
	}
	if k.bz != nil {
		outputs = append(outputs, output{BzimageFile, k.bz})
	}
	man := Manifest{
		Version:       1,
		KernelRelease: ver,
		KernelPackage: k.pkg,
		Compression:   k.kind,
		Modules:       relMods,
		Agent:         sha(agent),
		Runtime:       rt.name,
		RuntimeSHA:    sha(rt.exe),
		RuntimeLibs:   rt.libs,
		Files:         map[string]string{},
		Built:         time.Now().UTC().Truncate(time.Second),
	}
	if rt.name == RuntimeRunc {
		man.Runc = man.RuntimeSHA
	}
	for _, f := range outputs {
		if err := writeFileAtomic(filepath.Join(o.OutDir, f.name), f.data, 0o644); err != nil {
			return nil, err
		}
		man.Files[f.name] = sha(f.data)
	}
	if k.tree != nil {
		start := time.Now()
		if man.ModuleTree, err = installModuleTree(ctx, k.tree, o.OutDir, ver, logf); err != nil {
			return nil, err
		}
		logf("module tree indexed and installed in %v", time.Since(start).Round(time.Millisecond))
		img.Modules = filepath.Join(o.OutDir, ModulesDir)
	} else if err := removeStale(o.OutDir, ModulesDir); err != nil {
		// A built-in kernel has no module tree: an older kernel's tree must
		// not be shared with its VMs.
		return nil, err
	}
	if k.bz != nil {
		img.Bzimage = filepath.Join(o.OutDir, BzimageFile)
	} else if err := removeStale(o.OutDir, BzimageFile); err != nil {
		return nil, err
	}
	krunRoot, err := writeKrunRoot(o.OutDir, agent, rt.entries)
	if err != nil {
		return nil, err
	}
	logf("libkrun guest root: %s", krunRoot)
	img.KrunRoot = krunRoot
	mj, _ := json.MarshalIndent(man, "", "  ")
	if err := writeFileAtomic(filepath.Join(o.OutDir, ManifestFile), append(mj, '\n'), 0o644); err != nil {
		return nil, err
	}
	logf("wrote %s", o.OutDir)
	return img, nil
}

type builtInitrd struct {
	data    []byte
	entries int
}

// initramfs assembles the newc archive of the guest root.
func initramfs(entries []CpioEntry) (*builtInitrd, error) {
	var buf bytes.Buffer
	if err := writeCpio(&buf, entries); err != nil {
		return nil, err
	}
	return &builtInitrd{data: buf.Bytes(), entries: len(entries)}, nil
}

// rootEntries lists the guest root: the agent as /init, the OCI runtime
// (runtime: loadRuntime's entries), the boot-time modules and their list.
// The initramfs and the root disk hold the same entries.
func rootEntries(ver string, agent []byte, runtime []CpioEntry, mods []*kmod, modDir string) []CpioEntry {
	const (
		dir  = sIFDIR | 0o755
		exe  = sIFREG | 0o755
		file = sIFREG | 0o644
	)
	modRoot := "lib/modules/" + ver
	var list bytes.Buffer
	entries := []CpioEntry{
		{Name: "init", Mode: exe, Data: agent},
		// The kernel's usermode helper for request_module: the agent is
		// multi-call and acts as modprobe under that name.
		{Name: "sbin/modprobe", Mode: sIFLNK | 0o777, Data: []byte("/init")},
		{Name: "etc/msb/kernel-release", Mode: file, Data: []byte(ver + "\n")},
		{Name: "dev/console", Mode: sIFCHR | 0o600, Major: 5, Minor: 1},
		{Name: "dev/null", Mode: sIFCHR | 0o666, Major: 1, Minor: 3},
		{Name: modRoot + "/modules.dep", Mode: file, Data: modulesDep(mods)},
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "mnt", "etc", "sbin", "lib"} {
		entries = append(entries, CpioEntry{Name: d, Mode: dir})
	}
	entries = append(entries, CpioEntry{Name: "tmp", Mode: sIFDIR | 0o1777})
	entries = append(entries, runtime...)
	if modDir != "" {
		if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
			entries = append(entries, CpioEntry{Name: modRoot + "/modules.builtin", Mode: file, Data: b})
		}
	}
	for _, m := range mods {
		entries = append(entries, CpioEntry{Name: path.Join(modRoot, m.rel), Mode: file, Data: m.data})
		list.WriteString("/" + path.Join(modRoot, m.rel) + "\n")
	}
	return append(entries, CpioEntry{Name: "etc/msb/modules", Mode: file, Data: list.Bytes()})
}

// readStaticExe reads an executable for the guest root and refuses a
// dynamically linked one: the agent and runc come without a loader or
// libraries (only crun brings its own, readDynamicExe).
func readStaticExe(p, what string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("guest: %s: %w", what, err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("guest: %s %s is not an ELF executable: %w", what, p, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("guest: %s %s is for %v, want x86-64", what, p, f.Machine)
	}
	for _, pr := range f.Progs {
		if pr.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("guest: %s %s is dynamically linked; the guest needs a static binary", what, p)
		}
	}
	return b, nil
}

// extractDeb unpacks a .deb's data archive into dir with dpkg-deb.
func extractDeb(ctx context.Context, deb, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		return fmt.Errorf("guest: dpkg-deb is needed to unpack %s: %w", deb, err)
	}
	out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("guest: dpkg-deb -x %s: %v: %s", deb, err, bytes.TrimSpace(out))
	}
	return nil
}

// findKernel returns the release and path of the only boot/vmlinuz-* in root.
func findKernel(root string) (ver, bz string, err error) {
	var found []string
	for _, d := range []string{"boot", "usr/lib/linux"} { // usr/lib/linux: not seen yet, cheap to look
		m, _ := filepath.Glob(filepath.Join(root, d, "vmlinuz-*"))
		found = append(found, m...)
	}
	switch len(found) {
	case 0:
		return "", "", errors.New("no boot/vmlinuz-* in the package (is it a linux-image package?)")
	case 1:
	default:
		return "", "", fmt.Errorf("several kernels in the package: %v", found)
	}
	return strings.TrimPrefix(filepath.Base(found[0]), "vmlinuz-"), found[0], nil
}

func findModuleDir(root, ver string) string {
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		p := filepath.Join(root, d, ver)
		if st, err := os.Stat(filepath.Join(p, "kernel")); err == nil && st.IsDir() {
			return p
		}
	}
	return ""
}

// addModulesPackage unpacks linux-modules-<ver> (Ubuntu) into root: a sibling .deb of
// the kernel package, or, when downloading, the package from apt.
func addModulesPackage(ctx context.Context, kernelDeb string, download bool, ver, work, root string, logf func(string, ...any)) error {
	pkg := "linux-modules-" + ver
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(kernelDeb), pkg+"_*.deb"))
	var deb string
	switch {
	case len(m) > 0:
		sort.Strings(m)
		deb = m[len(m)-1]
	case download:
		var err error
		if deb, err = aptDownload(ctx, work, pkg, logf); err != nil {
			return err
		}
	default:
		return fmt.Errorf("guest: %s has no lib/modules/%s and no %s_*.deb lies beside it", kernelDeb, ver, pkg)
	}
	logf("unpacking %s ...", filepath.Base(deb))
	return extractDeb(ctx, deb, root)
}

var kernelPkgRE = regexp.MustCompile(`^linux-image-(unsigned-)?[0-9][^ ]*$`)

// downloadKernelDeb fetches the package the distribution's kernel metapackage
// (linux-image-amd64 on Debian, linux-image-generic on Ubuntu) currently depends on.
func downloadKernelDeb(ctx context.Context, dir string, logf func(string, ...any)) (string, error) {
	var errs []string
	for _, meta := range []string{"linux-image-amd64", "linux-image-generic"} {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", meta).Output()
		if err != nil {
			errs = append(errs, fmt.Sprintf("apt-cache depends %s: %v", meta, err))
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
			v = strings.TrimSpace(v)
			if ok && strings.TrimLeft(k, "|") == "Depends" && kernelPkgRE.MatchString(v) {
				logf("%s depends on %s", meta, v)
				return aptDownload(ctx, dir, v, logf)
			}
		}
		errs = append(errs, meta+": no linux-image-<version> dependency")
	}
	return "", fmt.Errorf("guest: cannot find the distribution kernel package (run apt-get update?): %s", strings.Join(errs, "; "))
}

// aptDownload runs "apt-get download pkg" in dir and returns the .deb's path.
func aptDownload(ctx context.Context, dir, pkg string, logf func(string, ...any)) (string, error) {
	logf("downloading %s ...", pkg)
	_ = os.Chmod(dir, 0o755) // lets apt's sandbox user write; otherwise apt only warns
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("guest: apt-get download %s: %v: %s", pkg, err, bytes.TrimSpace(out))
	}
	m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(m) != 1 {
		return "", fmt.Errorf("guest: apt-get download %s: expected one %s_*.deb, found %v", pkg, pkg, m)
	}
	return m[0], nil
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func writeFileAtomic(p string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}
