package guest

import (
	"fmt"
	"os"
	"path/filepath"
)

// KrunRootDir is the libkrun guest root under OutDir: libkrunfw brings the
// kernel (virtio drivers built in, no modules), so the root only holds the
// agent as /init, the OCI runtime, and empty mount points.
const KrunRootDir = "krunroot"

// writeKrunRoot (re)builds OutDir/krunroot in a temp dir and renames it into
// place, so a running libkrun VM keeps the tree it booted with.
func writeKrunRoot(outDir string, agent []byte, runtime []CpioEntry) (string, error) {
	tmp, err := os.MkdirTemp(outDir, ".krunroot-")
	if err != nil {
		return "", fmt.Errorf("guest root: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "mnt", "etc/msb", "sbin"} {
		if err := os.MkdirAll(filepath.Join(tmp, d), 0o755); err != nil {
			return "", fmt.Errorf("guest root: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "init"), agent, 0o755); err != nil {
		return "", fmt.Errorf("guest root: %w", err)
	}
	for _, e := range runtime {
		p := filepath.Join(tmp, e.Name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", fmt.Errorf("guest root: %w", err)
		}
		if err := os.WriteFile(p, e.Data, os.FileMode(e.Mode&0o777)); err != nil {
			return "", fmt.Errorf("guest root: %w", err)
		}
	}
	dst := filepath.Join(outDir, KrunRootDir)
	old := dst + ".old"
	_ = os.RemoveAll(old)
	if err := os.Rename(dst, old); err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("guest root: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", fmt.Errorf("guest root: %w", err)
	}
	ok = true
	_ = os.RemoveAll(old)
	return dst, nil
}
