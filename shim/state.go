package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/vmm"
)

// recordFile is the per-container record the shim keeps in the bundle, so
// that `containerd-shim-msb-v2 delete` can clean up after a shim that died.
const recordFile = "msb-shim.json"

// record is what a crashed shim leaves for the cleanup path: where its VM's
// state lives, which process the VMM is, and the init exit once known.
type record struct {
	ID          string `json:"id"`
	StateDir    string `json:"stateDir,omitempty"`
	AgentSocket string `json:"agentSocket,omitempty"`
	VMMPid      int    `json:"vmmPid,omitempty"`
	// Cgroup is the VM's host cgroup (vmm.HostResources.Cgroup).
	Cgroup string `json:"cgroup,omitempty"`
	// Rootfs is the directory the shim mounted the request's rootfs on.
	Rootfs string      `json:"rootfs,omitempty"`
	Exit   *exitRecord `json:"exit,omitempty"`
}

type exitRecord struct {
	Pid    uint32    `json:"pid"`
	Status uint32    `json:"status"`
	At     time.Time `json:"at"`
}

func writeRecord(bundle string, r *record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, "."+recordFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write shim record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(bundle, recordFile)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write shim record: %w", err)
	}
	return nil
}

// readRecord returns the bundle's record; a missing one is (nil, nil).
func readRecord(bundle string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(bundle, recordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(bundle, recordFile), err)
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
	if rec != nil {
		if rec.VMMPid > 0 {
			st.Pid = rec.VMMPid
			if err := stopStrayVMM(ctx, rec.VMMPid, rec.StateDir); err != nil {
				errs = append(errs, err)
			}
		}
		if rec.Exit != nil {
			st.Pid, st.ExitStatus, st.ExitedAt = int(rec.Exit.Pid), int(rec.Exit.Status), rec.Exit.At
		}
		// The VMM removes its cgroup unless it was killed too.
		if err := vmm.RemoveHostCgroup(&vmm.HostResources{Cgroup: rec.Cgroup}); err != nil {
			errs = append(errs, err)
		}
	}
	if err := mounts.UnmountBelow(filepath.Join(bundle, "rootfs")); err != nil {
		errs = append(errs, fmt.Errorf("unmount rootfs: %w", err))
	}
	if rec != nil {
		if ownStateDir(rec.StateDir) {
			// A pod VM's state dir holds its members' binds (ADR 007):
			// they go first, or RemoveAll would empty their volumes.
			if err := mounts.RemoveAllUnmounted(rec.StateDir); err != nil {
				errs = append(errs, err)
			}
		}
		if rec.AgentSocket != "" {
			vmm.RemoveSockets(rec.AgentSocket)
		}
	}
	if err := os.Remove(filepath.Join(bundle, recordFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return st, errors.Join(errs...)
}

// ownStateDir guards RemoveAll against a damaged record: only a directory
// below the shim's state root is removed.
func ownStateDir(dir string) bool {
	return dir != "" && strings.HasPrefix(filepath.Clean(dir), StateRoot()+"/")
}

// stopStrayVMM stops a VMM process that outlived its shim. The pid is only
// signalled while its command line still names the VM's state dir, so a
// recycled pid is left alone. SIGTERM lets the VMM power the guest off
// and reap its hypervisor; SIGKILL follows if it does not.
func stopStrayVMM(ctx context.Context, pid int, stateDir string) error {
	if !isVMM(pid, stateDir) {
		return nil
	}
	log.G(ctx).Infof("stopping VMM process %d left by the shim", pid)
	_ = unix.Kill(pid, unix.SIGTERM)
	if waitGone(pid, stateDir, 8*time.Second) {
		return nil
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	if waitGone(pid, stateDir, 3*time.Second) {
		return nil
	}
	return fmt.Errorf("VMM process %d did not exit after SIGKILL", pid)
}

func waitGone(pid int, stateDir string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !isVMM(pid, stateDir) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !isVMM(pid, stateDir)
}

// isVMM reports whether pid is a live (not zombie) process whose command
// line contains stateDir.
func isVMM(pid int, stateDir string) bool {
	if stateDir == "" {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !bytes.Contains(cmdline, []byte("\x00"+stateDir)) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}
