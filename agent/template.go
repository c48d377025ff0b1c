package agent

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/agent/task"
	"github.com/msb-dev/msb/protocol"
)

// VM templates (ADR 025): the host boots a VM to a ready agent, asks it to
// Detach, saves the VM, and starts others from the saved state. A
// restored guest resumes where the template was saved: in the agent's
// loop that reopens the channel, which then finds the new host.

var _ protocol.Templater = (*agentService)(nil)

// detachFlush is how long the agent waits after answering Detach before
// it ends the session, so the answer leaves the guest first.
const detachFlush = 50 * time.Millisecond

// detachedBackoff is how soon a detached agent reopens its channel: a
// restored guest finds its new host at once, not after the usual backoff.
const detachedBackoff = 10 * time.Millisecond

// maxSeed bounds Reseed's request.
const maxSeed = 4096

func (s *agentService) Detach(ctx context.Context) error {
	s.a.detached.Store(true)
	select {
	case s.a.detach <- struct{}{}:
	default:
	}
	return nil
}

func (s *agentService) Reseed(ctx context.Context, seed []byte) error {
	return task.ToStatus(s.a.Reseed(seed))
}

// Reseed credits seed to the kernel's input pool (RNDADDENTROPY) and
// forces the CRNG to reseed from it (RNDRESEEDCRNG): every guest restored
// from one template resumes with the same RNG state until then. Outside a
// guest it changes nothing.
func (a *Agent) Reseed(seed []byte) error {
	if len(seed) < 32 || len(seed) > maxSeed {
		return fmt.Errorf("reseed: %d bytes of seed, want 32 to %d: %w", len(seed), maxSeed, errdefs.ErrInvalidArgument)
	}
	if !a.opts.Guest {
		return nil
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("reseed: %w", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(seed)+3)
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(seed) * 8)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(seed))
	copy(buf[8:], seed)
	const rndAddEntropy, rndReseedCRNG = 0x40085203, 0x5207
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("reseed: RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); e != 0 {
		return fmt.Errorf("reseed: RNDRESEEDCRNG: %w", e)
	}
	log.L.Infof("RNG reseeded with %d bytes from the host", len(seed))
	return nil
}

// Detached reports whether the host asked the agent to Detach and no host
// has booted it since.
func (a *Agent) Detached() bool { return a.detached.Load() }

// endOnDetach closes sess once Detach was answered, until stop.
func (a *Agent) endOnDetach(sess interface{ Close() error }, stop <-chan struct{}) {
	select {
	case <-a.detach:
		time.Sleep(detachFlush)
		log.L.Info("detached from the host: the VM may be saved as a template")
		sess.Close()
	case <-stop:
	}
}

type detachState struct {
	detached atomic.Bool
	detach   chan struct{}
}
