package launch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// LoadSpec reads bundle/config.json. JSON errors name the line and column;
// every error wraps errdefs.ErrInvalidArgument except a missing file.
func LoadSpec(bundle string) (*specs.Spec, error) {
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bundle config: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", path, describeJSONError(b, err), errdefs.ErrInvalidArgument)
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return nil, fmt.Errorf("%s: root.path is missing: set it to the rootfs directory (usually \"rootfs\"): %w", path, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return nil, fmt.Errorf("%s: process.args is empty: set the command to run: %w", path, errdefs.ErrInvalidArgument)
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
