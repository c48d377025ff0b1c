package vmm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// A VM that stops without being asked is named by one line in the VMM
// log, "VM ended: <cause>: exiting <status>", which creators read back
// (EndCause) to say what happened. The status follows one rule: 137 when
// something killed the VM (its hypervisor or the VMM process got a
// signal), 255 when the guest stopped by itself (panic, power-off, the
// agent lost). docs/configuration.md lists the causes.

// endedPrefix starts the VMM log line naming why a VM stopped.
const endedPrefix = "VM ended: "

// agentExited starts guest PID 1's console line when the agent died.
const agentExited = "agent exited ("

// consoleTailBytes is how much of the console the cause is read from.
const consoleTailBytes = 64 << 10

// GuestStopCause names why a guest stopped by itself, from the tail of
// its console: the OOM killer taking the agent, a kernel panic, the
// guest's own power-off, or that the console does not say.
func GuestStopCause(consoleLog string) string {
	tail := ReadTail(consoleLog, consoleTailBytes)
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
		return "the guest agent died: " + strings.TrimSpace(agentLine[strings.Index(agentLine, agentExited):])
	case panicLine != "":
		return "guest kernel panic: " + strings.TrimSpace(panicLine[strings.Index(panicLine, "Kernel panic"):])
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
// is a seccomp filter's kill (qemu's own or msb's allow-list, seccomp.go),
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

// EndCause returns the cause the VMM logged in vmmLog when its VM
// stopped unasked; false when it logged none (it was killed itself).
func EndCause(vmmLog string) (string, bool) {
	tail := ReadTail(vmmLog, consoleTailBytes)
	i := bytes.LastIndex(tail, []byte(endedPrefix))
	if i < 0 {
		return "", false
	}
	line, _, _ := strings.Cut(string(tail[i+len(endedPrefix):]), "\n")
	cause, _, _ := strings.Cut(line, ": exiting ")
	return strings.ReplaceAll(cause, `\"`, `"`), true
}

// ReadTail reads at most n bytes from the end of the file at path (nil
// when it cannot): logs a guest writes to can be of any size.
func ReadTail(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return b
}
