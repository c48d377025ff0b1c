package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"golang.org/x/sys/unix"
)

// A VM that stops without being asked is named by its VMM in the file
// EndCauseFile of its state dir, which only the host writes (the VMM, as
// the state dir's owner; no share exports it), and creators read back
// (EndCause) to say what happened. The VMM knows how its hypervisor ended
// (its wait status, whether it killed it); only the detail of a guest
// that stopped by itself comes from the guest's console, and that is
// bounded and quoted, never parsed back for the status. The status
// follows one rule: 137 when something killed the VM (its hypervisor or
// the VMM process got a signal), 255 when the guest stopped by itself
// (panic, power-off, the agent lost). docs/configuration.md lists the
// causes.

// EndCauseFile is the VMM's record of why its VM ended, in its state dir.
const EndCauseFile = "end-cause"

// endCause is EndCauseFile's content.
type endCause struct {
	Cause  string `json:"cause"`
	Status int    `json:"status"`
}

// maxCauseDetail bounds what a cause quotes from guest-written text.
const maxCauseDetail = 200

// recordEndCause writes the cause and the VMM's exit status to the state
// dir, and logs them (vmm.log is for people, not read back).
func recordEndCause(stateDir, cause string, status int) {
	b, _ := json.Marshal(endCause{Cause: cause, Status: status})
	err := writeHostFile(filepath.Join(stateDir, EndCauseFile), b)
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

// EndCause returns the cause the VMM recorded in stateDir when its VM
// stopped unasked; false when it recorded none (it was killed itself).
func EndCause(stateDir string) (string, bool) {
	f, err := os.OpenFile(filepath.Join(stateDir, EndCauseFile), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", false
	}
	defer f.Close()
	var c endCause
	if err := json.NewDecoder(io.LimitReader(f, 4<<10)).Decode(&c); err != nil || c.Cause == "" {
		return "", false
	}
	return c.Cause, true
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
