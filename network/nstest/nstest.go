// Package nstest runs a test's network code in namespaces of its own,
// never the host's.
package nstest

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Run runs fn on a thread in a new network namespace, whose path
// (/proc/<pid>/task/<tid>/ns/net) it gets, with peers, a second new one
// (for veth peers). It skips the test without root. The thread is thrown
// away, never handed back to the Go scheduler.
func Run(t *testing.T, fn func(path string, peers netns.NsHandle)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends in the new namespace
		peers, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer peers.Close()
		if _, err := netns.New(); err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		fn(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()), peers)
	}()
	<-done
}
