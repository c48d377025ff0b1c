//go:build !cgo

package libkrun

import "errors"

// Loadable: this build cannot dlopen libkrun.
const Loadable = false

// load: libkrun is loaded with dlopen, which needs cgo.
func load(path string) (*Lib, error) {
	return nil, errors.New("libkrun is not available: this msb-runtime was built with CGO_ENABLED=0 and cannot dlopen " +
		path + ": rebuild it with CGO_ENABLED=1 (the default where gcc is installed), or use backend qemu")
}

// AtExit: libkrun is never loaded without cgo.
func AtExit(func() int) error {
	return errors.New("libkrun exit handler needs cgo: rebuild msb-runtime with CGO_ENABLED=1")
}
