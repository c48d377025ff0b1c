package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/mounts"
)

// RecordFile is the per-container record the shim keeps in the bundle, so
// that `containerd-shim-msb-v2 delete` can clean up after a shim that died.
const RecordFile = "msb-shim.json"

// Record is what a crashed shim leaves for the cleanup path: where its VM's
// state lives, which process the VMM is, and the init exit once known. The
// task service writes it; the manager's Stop reads it, and Start reads the
// records beside a bundle to find the container whose namespaces it joins.
type Record struct {
	ID string `json:"id"`
	// VMRecord is the container's VM, once it has one of its own (a cold
	// or a claimed one; a pod member's is its sandbox's).
	launch.VMRecord
	// Anchor is the task pid of a container that claimed a pool VM
	// (shim/warm.go), AnchorStart its start time; 0 when the task pid is the
	// VMM's. Another container's spec names the VM by it (ADR 030).
	Anchor      int    `json:"anchor,omitempty"`
	AnchorStart uint64 `json:"anchorStart,omitempty"`
	// Rootfs is the directory the shim mounted the request's rootfs on.
	Rootfs string      `json:"rootfs,omitempty"`
	Exit   *ExitRecord `json:"exit,omitempty"`
}

// ExitRecord is init's exit, as the shim reported it to containerd.
type ExitRecord struct {
	Pid    uint32    `json:"pid"`
	Status uint32    `json:"status"`
	At     time.Time `json:"at"`
}

// WriteRecord replaces bundle's record atomically (write, then rename).
func WriteRecord(bundle string, r *Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, "."+RecordFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write shim record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(bundle, RecordFile)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write shim record: %w", err)
	}
	return nil
}

// taskPid is the pid and start time the container's task reports: its
// anchor's, else its VMM's (0 for a pod member, whose VM is another's).
func (r *Record) taskPid() (int, uint64) {
	if r.Anchor > 0 {
		return r.Anchor, r.AnchorStart
	}
	return r.Pid, r.PidStart
}

// readRecord returns the bundle's record; a missing one is (nil, nil).
func readRecord(bundle string) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(bundle, RecordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(bundle, RecordFile), err)
	}
	return &r, nil
}

// cleanupBundle is the manager's Stop (`containerd-shim-msb-v2 delete`):
// whatever a dead shim left of the container in bundle goes: the VMM
// process, the rootfs mount, the VM's state dir and agent socket. It
// reports the init exit the shim recorded, else 137 (killed).
func cleanupBundle(ctx context.Context, bundle string) (cshim.StopStatus, error) {
	st := cshim.StopStatus{ExitStatus: 128 + int(unix.SIGKILL), ExitedAt: time.Now()}
	rec, err := readRecord(bundle)
	if err != nil {
		log.G(ctx).WithError(err).Warn("unreadable shim record: cleaning up what can be found")
	}
	var errs []error
	if rec != nil && rec.Pid > 0 {
		st.Pid = rec.Pid
	}
	if rec != nil {
		// The VMM shuts its guest down when its shim dies; this stops
		// one that has not gone yet.
		if err := rec.Stop(nil); err != nil {
			errs = append(errs, err)
		}
		if rec.Exit != nil {
			st.Pid, st.ExitStatus, st.ExitedAt = int(rec.Exit.Pid), int(rec.Exit.Status), rec.Exit.At
		}
	}
	if err := mounts.UnmountBelow(filepath.Join(bundle, "rootfs")); err != nil {
		errs = append(errs, fmt.Errorf("unmount rootfs: %w", err))
	}
	if rec != nil {
		vr := rec.VMRecord
		if !ownStateDir(vr.StateDir) {
			vr.StateDir = ""
		}
		// A pod VM's state dir holds its members' binds (ADR 007): Remove
		// takes them first, or removing it would empty their volumes.
		if err := vr.Remove(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(filepath.Join(bundle, RecordFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return st, errors.Join(errs...)
}

// ownStateDir guards RemoveAll against a damaged record: only a directory
// below the shim's state root is removed.
func ownStateDir(dir string) bool {
	return dir != "" && strings.HasPrefix(filepath.Clean(dir), config.ShimStateRoot()+"/")
}
