package vmm

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"

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

// Exit codes of the VMM process when the guest did not report one.
const (
	ExitGuestLost = 255 // the VM stopped without a shutdown request
	ExitKilled    = 137 // the creator died or the VMM was signalled
)

// EndCauseFile is the VMM's record of why its VM ended, in its state dir.
const EndCauseFile = "end-cause"

// EndCauseRecord is EndCauseFile's content.
type EndCauseRecord struct {
	Cause  string `json:"cause"`
	Status int    `json:"status"`
}

// EndCause returns the cause the VMM recorded in stateDir when its VM
// stopped unasked; false when it recorded none (it was killed itself).
func EndCause(stateDir string) (string, bool) {
	f, err := os.OpenFile(filepath.Join(stateDir, EndCauseFile), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", false
	}
	defer f.Close()
	var c EndCauseRecord
	if err := json.NewDecoder(io.LimitReader(f, 4<<10)).Decode(&c); err != nil || c.Cause == "" {
		return "", false
	}
	return c.Cause, true
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
