package manager

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// VMMBinary finds msb-runtime, whose hidden `vmm` command is the VMM
// process: next to the shim's own executable, else on PATH, else in
// /usr/local/bin. The manager asks it for `features` (Info); the task
// service spawns VMs and fills the pool with it.
func VMMBinary() (string, error) {
	const name = "msb-runtime"
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	p := "/usr/local/bin/" + name
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("the VMM binary %s is neither next to the shim, on PATH nor in /usr/local/bin: install msb (install.sh): %w", name, errdefs.ErrNotFound)
	}
	return p, nil
}
