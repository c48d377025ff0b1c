//go:build cgo

package libkrun

import "C"

// msbKrunAtExit runs inside exit() when libkrun ends the VMM process (the
// guest stopped): it runs the AtExit hook (the VMM removes its sockets) and
// returns the exit code to use instead of libkrun's, or -1 to keep libkrun's. Kept apart from
// libkrun_cgo.go because a file with //export may only declare C.
//
//export msbKrunAtExit
func msbKrunAtExit() C.int {
	if h := atExitHook.Load(); h != nil {
		return C.int((*h)())
	}
	return -1
}
