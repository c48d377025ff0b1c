// Command msb-runtime is the runc-compatible OCI runtime CLI of msb; its
// hidden "vmm" subcommand is the VMM process.
package main

import (
	"os"

	"github.com/msb-dev/msb/ociruntime"
)

func main() { os.Exit(ociruntime.Main(os.Args)) }
