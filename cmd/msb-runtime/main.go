// Command msb-runtime is the runc-compatible OCI runtime CLI of msb; its
// hidden "vmm" subcommand is the VMM process.
package main

import (
	"os"
	"runtime"

	"github.com/msb-dev/msb/ociruntime"
	"github.com/msb-dev/msb/vmmcmd"
)

// The main thread of the VMM, the anchor and a pod member's relay moves
// into the container's view (view/view.go): keep the main goroutine on it,
// from before anything else starts a thread. (An argument that only looks
// like one of them pins a CLI call's goroutine, which is harmless.)
func init() {
	for _, a := range os.Args[1:] {
		if a == "vmm" || a == "anchor" || a == "member-relay" {
			runtime.LockOSThread()
			return
		}
	}
}

func main() { os.Exit(ociruntime.Main(os.Args, vmmcmd.Commands()...)) }
