// Package ociruntime is the logic behind msb-runtime, the runc-compatible
// OCI runtime CLI: it turns a bundle into a VM launch (specconv, mounts),
// starts the VMM process (vmm) and drives the guest agent.
package ociruntime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// validID is runc's rule for container IDs; it keeps IDs usable as path
// components.
var validID = regexp.MustCompile(`^[\w+\-.]+$`)

func checkID(id string) error {
	if id == "" {
		return errors.New("container id is empty: give one, e.g. msb-runtime run --bundle DIR myid")
	}
	if !validID.MatchString(id) || id == "." || id == ".." || len(id) > 1024 {
		return fmt.Errorf("container id %q is invalid: use letters, digits and _ + - . only", id)
	}
	return nil
}

// rootfsPath resolves the spec's root.path against the bundle.
func rootfsPath(bundle string, spec *specs.Spec) (string, error) {
	p := spec.Root.Path
	if !filepath.IsAbs(p) {
		p = filepath.Join(bundle, p)
	}
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("root.path %q: %w", spec.Root.Path, err)
	}
	st, err := os.Stat(r)
	if err != nil {
		return "", fmt.Errorf("root.path %q: %w", spec.Root.Path, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("root.path %q is not a directory", spec.Root.Path)
	}
	return r, nil
}
