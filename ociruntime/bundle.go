// Package ociruntime is the logic behind msb-runtime, the runc-compatible
// OCI runtime CLI: it turns a bundle into a VM launch (specconv, mounts),
// starts the VMM process (vmm) and drives the guest agent.
package ociruntime

import (
	"bytes"
	"encoding/json"
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

// loadSpec reads bundle/config.json. JSON errors name the line and column.
func loadSpec(bundle string) (*specs.Spec, error) {
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bundle config: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("%s: %s", path, describeJSONError(b, err))
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return nil, fmt.Errorf("%s: root.path is missing: set it to the rootfs directory (usually \"rootfs\")", path)
	}
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return nil, fmt.Errorf("%s: process.args is empty: set the command to run", path)
	}
	return &spec, nil
}

func describeJSONError(b []byte, err error) string {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
		if te.Field != "" {
			return fmt.Sprintf("field %s: expected %s, got JSON %s (line %d): fix the value's type", te.Field, te.Type, te.Value, lineOf(b, off))
		}
	}
	if off < 0 {
		return fmt.Sprintf("invalid JSON: %v", err)
	}
	line := lineOf(b, off)
	col := off - int64(bytes.LastIndexByte(b[:min(off, int64(len(b)))], '\n'))
	return fmt.Sprintf("invalid JSON at line %d, column %d: %v", line, col, err)
}

func lineOf(b []byte, off int64) int {
	return bytes.Count(b[:min(off, int64(len(b)))], []byte("\n")) + 1
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
