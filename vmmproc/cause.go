package vmmproc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"unicode"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/vmm"
)

// Why a guest stopped by itself, from the tail of its console, for the
// cause the VMM records (recordEndCause, vmm.EndCause).

// endedPrefix starts the VMM log line naming why a VM stopped.
const endedPrefix = "VM ended: "

// logEnded logs why the VM ended for people reading vmm.log.
func logEnded(cause string, status int, recordErr error) {
	l := log.L.WithError(recordErr)
	if recordErr == nil {
		l = log.L.WithFields(nil)
	}
	l.Warnf("%s%s: exiting %d", endedPrefix, cause, status)
}

// agentExited starts guest PID 1's console line when the agent died.
const agentExited = "agent exited ("

// consoleTailBytes is how much of the console the cause is read from.
const consoleTailBytes = 64 << 10

// GuestStopCause names why a guest stopped by itself, from the tail of
// its console: the OOM killer taking the agent, a kernel panic, the
// guest's own power-off, or that the console does not say.
func GuestStopCause(consoleLog string) string {
	tail := vmm.ReadTail(consoleLog, consoleTailBytes)
	var panicLine, oomLine, agentLine string
	off := false
	sc := bufio.NewScanner(bytes.NewReader(tail))
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.Contains(l, "Out of memory: Killed process"):
			oomLine = l
		case strings.Contains(l, agentExited):
			agentLine = l
		case strings.Contains(l, "Kernel panic - not syncing"):
			panicLine = l
		case strings.Contains(l, "reboot: Power down") || strings.Contains(l, "reboot: System halted"):
			off = true
		}
	}
	switch {
	case agentLine != "" && oomLine != "":
		return "the guest's OOM killer killed the agent (guest memory exhausted)"
	case agentLine != "":
		return "the guest agent died: " + quoteGuest(agentLine[strings.Index(agentLine, agentExited):])
	case panicLine != "":
		return "guest kernel panic: " + quoteGuest(panicLine[strings.Index(panicLine, "Kernel panic"):])
	case off:
		return "the guest powered itself off"
	}
	return "the guest stopped and its console does not say why"
}

// hypervisorKilled reports whether the hypervisor's exit error is a
// signal's.
func hypervisorKilled(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled()
}

// hypervisorKilledCause names the hypervisor's death by signal; SIGSYS
// is a seccomp filter's kill (qemu's own or msb's allow-list, jail/seccomp.go),
// whose syscall only the kernel log names.
func hypervisorKilledCause(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGSYS {
			return "the hypervisor was killed by its seccomp filter (signal: bad system call), a syscall off the list; the kernel log names it (dmesg | grep type=1326: syscall=<number>)"
		}
	}
	return fmt.Sprintf("the hypervisor was killed (%v)", err)
}

// maxCauseDetail bounds what a cause quotes from guest-written text.
const maxCauseDetail = 200

// recordEndCause writes the cause and the VMM's exit status to the state
// dir, and logs them (vmm.log is for people, not read back).
func recordEndCause(stateDir, cause string, status int) {
	b, _ := json.Marshal(vmm.EndCauseRecord{Cause: cause, Status: status})
	err := writeHostFile(filepath.Join(stateDir, vmm.EndCauseFile), b)
	if err != nil {
		err = fmt.Errorf("record why the VM ended: %w", err)
	}
	logEnded(cause, status, err)
}

// writeHostFile writes b to path anew, without following a link there.
func writeHostFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	return errors.Join(werr, f.Close())
}

// quoteGuest bounds text a guest wrote for a cause: printable, one line,
// at most maxCauseDetail bytes.
func quoteGuest(s string) string {
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > maxCauseDetail {
		s = s[:maxCauseDetail] + "…"
	}
	return s
}
