//go:build !cgo

package vmmproc

import "errors"

// libkrunLoadable: this build cannot dlopen libkrun.
const libkrunLoadable = false

// loadLibkrun: libkrun is loaded with dlopen, which needs cgo.
func loadLibkrun(path string) (*libkrun, error) {
	return nil, errors.New("libkrun is not available: this msb-runtime was built with CGO_ENABLED=0 and cannot dlopen " +
		path + ": rebuild it with CGO_ENABLED=1 (the default where gcc is installed), or use backend qemu")
}

func registerKrunAtExit() error {
	return errors.New("libkrun exit handler needs cgo: rebuild msb-runtime with CGO_ENABLED=1")
}
