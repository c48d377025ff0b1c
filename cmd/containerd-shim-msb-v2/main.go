// Command containerd-shim-msb-v2 will be the containerd shim v2 of msb
// (runtime type io.containerd.msb.v2). Until the shim lands it only reports
// its version, so packaging and install paths can be exercised.
package main

import (
	"fmt"
	"os"

	"github.com/msb-dev/msb/version"
)

func main() {
	fmt.Printf("containerd-shim-msb-v2 %s (shim not implemented yet: use msb-runtime)\n", version.Version)
	if len(os.Args) > 1 && os.Args[1] != "-v" && os.Args[1] != "--version" {
		os.Exit(1)
	}
}
