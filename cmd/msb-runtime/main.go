// Command msb-runtime is the runc-compatible OCI runtime CLI of msb; its
// hidden "vmm" subcommand is the VMM process.
package main

import (
	"os"
	"runtime"

	"github.com/msb-dev/msb/ociruntime"
)

// The VMM's and the anchor's main thread moves into the container's view
// (vmm/view.go): keep the main goroutine on it, from before anything else
// starts a thread.
func init() {
	if len(os.Args) > 1 && (os.Args[1] == "vmm" || os.Args[1] == "anchor") {
		runtime.LockOSThread()
	}
}

func main() { os.Exit(ociruntime.Main(os.Args)) }
