package vmm

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
	// JailIDBase is the first host id of the ranges: above the ranges
	// /etc/subuid usually hands out (100000 and up in 65536 steps for a
	// few users) and Kubernetes' user-namespace pods' (65536 × n, n below
	// 16384 by default), below the largest ids.
	JailIDBase = 1 << 31
	// JailIDSize is the ids of one VM: a guest's usual ids (0 to 65535)
	// keep their owners on the shares; larger ones show as 65534.
	JailIDSize  = 1 << 16
	jailIDSlots = 1 << 14 // up to 2^31 + 2^30
	// jailIDLock holds one lock byte per range: a VMM process holds its
	// range's byte (an open file description lock) while it lives, and
	// the kernel releases it when it exits, however it exits. Fixed, not
	// below a --root: ranges are unique on the host.
	jailIDLock = "/run/msb/jail-ids.lock"
)

// JailIDs is a range of host ids held by this process.
type JailIDs struct {
	base uint32
	lock *os.File // nil: held by another process
}

// Base is the range's first host id.
func (j *JailIDs) Base() uint32 { return j.base }

// AllocJailIDs takes a free range, trying first the one seed hashes to
// (a VM keeps its ids across a TCG retry and mostly across restarts).
func AllocJailIDs(seed string) (*JailIDs, error) {
	if err := os.MkdirAll(filepath.Dir(jailIDLock), 0o711); err != nil {
		return nil, fmt.Errorf("jail ids: %w", err)
	}
	f, err := os.OpenFile(jailIDLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("jail ids: %w", err)
	}
	h := fnv.New32a()
	h.Write([]byte(seed))
	start := h.Sum32() % jailIDSlots
	for i := uint32(0); i < jailIDSlots; i++ {
		slot := (start + i) % jailIDSlots
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(slot), Len: 1}
		err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
		if err == nil {
			return &JailIDs{base: JailIDBase + slot*JailIDSize, lock: f}, nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			f.Close()
			return nil, fmt.Errorf("jail ids: lock %s: %w", jailIDLock, err)
		}
	}
	f.Close()
	return nil, fmt.Errorf("jail ids: all %d ranges are in use", jailIDSlots)
}

// Release gives the range back; the VM's hypervisor must be gone.
func (j *JailIDs) Release() {
	if j != nil && j.lock != nil {
		j.lock.Close()
	}
}
