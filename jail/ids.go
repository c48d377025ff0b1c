package jail

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Each jailed qemu runs as root of a user namespace of its own whose 65536
// ids are a range of host ids no other running VM has (ADR 022): an
// escaped qemu is an unprivileged host user that owns nothing outside its
// VM's shares, and its capabilities reach only files whose owners its
// range maps, which another VM's files are not.
const (
	// IDBase is the first host id of the ranges: above the ranges
	// /etc/subuid usually hands out (100000 and up in 65536 steps for a
	// few users) and Kubernetes' user-namespace pods' (65536 × n, n below
	// 16384 by default), below the largest ids.
	IDBase = 1 << 31
	// IDSize is the ids of one VM: a guest's usual ids (0 to 65535)
	// keep their owners on the shares; larger ones show as 65534.
	IDSize  = 1 << 16
	idSlots = 1 << 14 // up to 2^31 + 2^30
	// idLock holds one lock byte per range: a VMM process holds its
	// range's byte (an open file description lock) while it lives, and
	// the kernel releases it when it exits, however it exits. Fixed, not
	// below a --root: ranges are unique on the host.
	idLock = "/run/msb/jail-ids.lock"
)

// IDs is a range of host ids held by this process.
type IDs struct {
	base uint32
	lock *os.File // nil: held by another process
}

// Base is the range's first host id.
func (j *IDs) Base() uint32 { return j.base }

// AllocIDs takes a free range, trying first the one seed hashes to
// (a VM keeps its ids across a TCG retry and mostly across restarts).
func AllocIDs(seed string) (*IDs, error) {
	if err := os.MkdirAll(filepath.Dir(idLock), 0o711); err != nil {
		return nil, fmt.Errorf("jail ids: %w", err)
	}
	f, err := os.OpenFile(idLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("jail ids: %w", err)
	}
	h := fnv.New32a()
	h.Write([]byte(seed))
	start := h.Sum32() % idSlots
	for i := uint32(0); i < idSlots; i++ {
		slot := (start + i) % idSlots
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(slot), Len: 1}
		err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
		if err == nil {
			return &IDs{base: IDBase + slot*IDSize, lock: f}, nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			f.Close()
			return nil, fmt.Errorf("jail ids: lock %s: %w", idLock, err)
		}
	}
	f.Close()
	return nil, fmt.Errorf("jail ids: all %d ranges are in use", idSlots)
}

// HeldIDs is the range from base that another process holds (a VMM's
// creator, LaunchConfig.JailIDBase): Release leaves it to that process.
func HeldIDs(base uint32) *IDs { return &IDs{base: base} }

// Release gives the range back; the VM's hypervisor must be gone.
func (j *IDs) Release() {
	if j != nil && j.lock != nil {
		j.lock.Close()
	}
}
