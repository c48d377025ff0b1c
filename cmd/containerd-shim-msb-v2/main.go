// Command containerd-shim-msb-v2 is msb's containerd shim v2 (runtime type
// io.containerd.msb.v2): every container runs in its own microVM. All logic
// is in package shim.
package main

import (
	"context"

	"github.com/msb-dev/msb/shim"
)

func main() {
	shim.RegisterPlugins()
	shim.Run(context.Background(), shim.NewManager(shim.RuntimeName), shim.BinaryOpts()...)
}
