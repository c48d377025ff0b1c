// Command containerd-shim-msb-v2 is msb's containerd shim v2 (runtime type
// io.containerd.msb.v2): every container runs in its own microVM. All logic
// is in package shim and its subpackages.
package main

import (
	"context"

	"github.com/msb-dev/msb/shim"
	"github.com/msb-dev/msb/shim/bootstrap"
	"github.com/msb-dev/msb/shim/manager"
)

func main() {
	shim.RegisterPlugins()
	bootstrap.Run(context.Background(), manager.New(manager.RuntimeName), shim.BinaryOpts()...)
}
