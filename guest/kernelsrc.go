package guest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// kernelSource is the kernel an image is built from: a distribution's
// package (vmlinux extracted from its bzImage, modules in a tree) or a kernel
// of msb's own with everything built in (hack/build-kernel.sh).
type kernelSource struct {
	release string
	pkg     string // what it came from, for the manifest
	kind    string // the bzImage payload's compression; "none" for a plain vmlinux
	vmlinux []byte
	bz      []byte      // nil for a kernel of msb's own
	tree    *moduleTree // nil when there are no modules
}

// modDir is the unpacked lib/modules/<release>; "" without modules.
func (k *kernelSource) modDir() string {
	if k.tree == nil {
		return ""
	}
	return k.tree.dir
}

// Files of a kernel directory written by hack/build-kernel.sh.
const (
	kernelDirVmlinux = "vmlinux"
	kernelDirRelease = "kernel.release"
	kernelDirSource  = "source"
)

func loadKernel(ctx context.Context, o Options, work string, logf func(string, ...any)) (*kernelSource, error) {
	if o.KernelDir != "" {
		return dirKernel(o.KernelDir, logf)
	}
	return debKernel(ctx, o, work, logf)
}

// dirKernel reads a kernel built by hack/build-kernel.sh.
func dirKernel(dir string, logf func(string, ...any)) (*kernelSource, error) {
	rel, err := os.ReadFile(filepath.Join(dir, kernelDirRelease))
	if err != nil {
		return nil, fmt.Errorf("guest: kernel dir %s (built by hack/build-kernel.sh?): %w", dir, err)
	}
	k := &kernelSource{release: strings.TrimSpace(string(rel)), kind: "none"}
	if k.release == "" || strings.ContainsAny(k.release, "/ \n") {
		return nil, fmt.Errorf("guest: kernel dir %s: %s holds %q, not a kernel release", dir, kernelDirRelease, rel)
	}
	src, _ := os.ReadFile(filepath.Join(dir, kernelDirSource))
	k.pkg = strings.TrimSpace(string(src))
	if k.pkg == "" {
		k.pkg = dir
	}
	if k.vmlinux, err = os.ReadFile(filepath.Join(dir, kernelDirVmlinux)); err != nil {
		return nil, fmt.Errorf("guest: kernel dir %s: %w", dir, err)
	}
	if k.vmlinux, err = trimELF(k.vmlinux); err != nil {
		return nil, fmt.Errorf("guest: kernel %s: %w", k.release, err)
	}
	if err := checkPVH(k.vmlinux); err != nil {
		return nil, fmt.Errorf("guest: kernel %s: %w (CONFIG_PVH=y is needed)", k.release, err)
	}
	logf("kernel %s (%s): vmlinux %d MiB, PVH entry note present, no modules", k.release, k.pkg, len(k.vmlinux)>>20)
	return k, nil
}

// debKernel unpacks a distribution kernel package (downloading the current
// one when o.KernelDeb is empty) into work.
func debKernel(ctx context.Context, o Options, work string, logf func(string, ...any)) (*kernelSource, error) {
	deb := o.KernelDeb
	if deb == "" {
		var err error
		if deb, err = downloadKernelDeb(ctx, work, logf); err != nil {
			return nil, err
		}
	}
	root := filepath.Join(work, "root")
	logf("unpacking %s ...", filepath.Base(deb))
	if err := extractDeb(ctx, deb, root); err != nil {
		return nil, err
	}
	ver, bzPath, err := findKernel(root)
	if err != nil {
		return nil, fmt.Errorf("guest: %s: %w", deb, err)
	}
	modDir := findModuleDir(root, ver)
	if modDir == "" {
		// Ubuntu ships the modules in a separate linux-modules-<ver> package.
		if err := addModulesPackage(ctx, deb, o.KernelDeb == "", ver, work, root, logf); err != nil {
			return nil, err
		}
		if modDir = findModuleDir(root, ver); modDir == "" {
			return nil, fmt.Errorf("guest: no lib/modules/%s in %s", ver, deb)
		}
	}
	k := &kernelSource{release: ver, pkg: filepath.Base(deb)}
	if k.bz, err = os.ReadFile(bzPath); err != nil {
		return nil, err
	}
	logf("extracting kernel %s ...", ver)
	if k.vmlinux, k.kind, err = extractVmlinux(ctx, k.bz); err != nil {
		return nil, fmt.Errorf("guest: kernel %s: %w", ver, err)
	}
	logf("kernel %s: %s payload, vmlinux %d MiB, PVH entry note present", ver, k.kind, len(k.vmlinux)>>20)
	if k.tree, err = loadModuleTree(modDir); err != nil {
		return nil, err
	}
	return k, nil
}

// removeStale removes OutDir/name, left by an image of another kind of
// kernel: renamed aside first, so nothing sees it half removed.
func removeStale(outDir, name string) error {
	p := filepath.Join(outDir, name)
	old := filepath.Join(outDir, ".stale-"+name)
	if err := os.Rename(p, old); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("guest: remove stale %s: %w", p, err)
	}
	return os.RemoveAll(old)
}
