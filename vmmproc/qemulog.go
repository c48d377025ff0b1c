package vmmproc

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/msb-dev/msb/caplog"
	"github.com/msb-dev/msb/vmm"
)

// qemu's stdout and stderr go to QEMULogFile in the state dir through a
// pipe the VMM copies into a capped log (package caplog), not to vmm.log:
// a guest can make qemu print (device errors, 9p warnings) without end,
// and the state dir is usually on a tmpfs (host RAM). vmm.log holds the
// VMM's own lines only.

// QEMULogFile is qemu's own output in the VM's state dir.
const QEMULogFile = "qemu.log"

// qemuLogMax caps QEMULogFile: qemu's own messages are a few lines; the
// rest is what a guest made it say, of which the newest is kept.
const qemuLogMax = 1 << 20

// qemuOutput opens the capped qemu.log in cfg's state dir and returns the
// pipe end qemu writes to (caplog.Pipe).
func qemuOutput(cfg *vmm.LaunchConfig) (w *os.File, closeFn func(), err error) {
	w, closeFn, err = caplog.Pipe(filepath.Join(cfg.RuntimeDir, QEMULogFile), qemuLogMax)
	if err != nil {
		return nil, nil, fmt.Errorf("qemu log: %w", err)
	}
	return w, closeFn, nil
}

// qemuSaid is the last lines qemu wrote, for an error about its exit
// (bounded: quoted guest-reachable text); "" when it wrote nothing.
func qemuSaid(cfg *vmm.LaunchConfig) string {
	b := vmm.ReadTail(filepath.Join(cfg.RuntimeDir, QEMULogFile), 4<<10)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	s := quoteGuest(strings.Join(lines, " | "))
	if s == "" {
		return ""
	}
	return "; qemu said: " + s
}
