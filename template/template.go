// Package template keeps a saved VM template (ADR 025) and hands it to
// the VMMs that start VMs from it. A template is two sealed memfds: the
// guest's RAM as it was at the save, which every VM started from it maps
// copy-on-write (MAP_PRIVATE), and qemu's device state. Sealed against
// writes, growing and shrinking, the RAM cannot be changed by any qemu
// that maps it, so a VM that escapes into its qemu cannot reach the
// pages other VMs still share.
//
// Nothing on disk can hold a memfd and none can be bind-mounted, so a
// small holder process (Hold) keeps them and serves them on a Unix
// socket to root callers; it has no other job, and ends when told to or
// killed. Its RAM is shmem: it counts once per node, as a tmpfs file
// would.
package template

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SockName is the holder's socket in a template directory.
const SockName = "template.sock"

// Seals is what a template's files are sealed with.
const Seals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE

// The one-byte requests a holder answers.
const (
	reqFetch = 'f'
	reqStop  = 'q'
)

// timeout bounds every exchange with a holder.
const timeout = 10 * time.Second

// NewFile makes an empty sealable memfd of size bytes named name.
func NewFile(name string, size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_ALLOW_SEALING|unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("template: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if size > 0 {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("template: size %s: %w", name, err)
		}
	}
	return f, nil
}

// Seal seals f (Seals). It fails while anyone maps f shared and writable:
// the qemu that wrote it must have ended.
func Seal(f *os.File) error {
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, Seals); err != nil {
		return fmt.Errorf("template: seal %s: %w", f.Name(), err)
	}
	return nil
}

// Sealed checks that f carries Seals.
func Sealed(f *os.File) error {
	got, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("template: seals of %s: %w", f.Name(), err)
	}
	if got&Seals != Seals {
		return fmt.Errorf("template: %s is not sealed against writes (seals %#x)", f.Name(), got)
	}
	return nil
}

// Start spawns the holder (binary's "pool hold <dir>", which calls Hold)
// for ram and state, detached, and waits until it answers on dir's socket.
func Start(binary, dir string, ram, state *os.File) error {
	for _, f := range []*os.File{ram, state} {
		if err := Sealed(f); err != nil {
			return err
		}
	}
	log, err := os.OpenFile(filepath.Join(dir, "holder.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("template: holder log: %w", err)
	}
	defer log.Close()
	cmd := exec.Command(binary, "pool", "hold", dir)
	cmd.ExtraFiles = []*os.File{ram, state} // fds 3 and 4
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("template: start holder: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(timeout)
	for {
		if Alive(dir) {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("template: holder exited at start: %v (see %s)", err, log.Name())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return fmt.Errorf("template: holder did not listen within %s", timeout)
		}
	}
}

// Alive reports whether dir's holder answers.
func Alive(dir string) bool {
	c, err := net.DialTimeout("unix", filepath.Join(dir, SockName), timeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Stop ends dir's holder, if one runs.
func Stop(dir string) error {
	c, err := dial(filepath.Join(dir, SockName))
	if err != nil {
		return nil
	}
	defer c.Close()
	if _, err := c.Write([]byte{reqStop}); err != nil {
		return fmt.Errorf("template: stop holder: %w", err)
	}
	// It closes the connection when it exits.
	_, _ = c.Read(make([]byte, 1))
	return nil
}

func dial(sock string) (*net.UnixConn, error) {
	c, err := net.DialTimeout("unix", sock, timeout)
	if err != nil {
		return nil, err
	}
	uc := c.(*net.UnixConn)
	_ = uc.SetDeadline(time.Now().Add(timeout))
	return uc, nil
}

// Fetch gets a template's RAM and state from the holder on sock. The RAM
// is checked sealed; the state is a file of its own, read from its start.
func Fetch(sock string) (ram, state *os.File, err error) {
	c, err := dial(sock)
	if err != nil {
		return nil, nil, fmt.Errorf("template: no holder on %s: %w", sock, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{reqFetch}); err != nil {
		return nil, nil, fmt.Errorf("template: fetch: %w", err)
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(2*4))
	_, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, fmt.Errorf("template: fetch: %w", err)
	}
	fds, err := parseRights(oob[:oobn])
	if err != nil {
		return nil, nil, err
	}
	if len(fds) != 2 {
		closeFDs(fds)
		return nil, nil, fmt.Errorf("template: holder sent %d files, want 2", len(fds))
	}
	ram, state = os.NewFile(uintptr(fds[0]), "template-ram"), os.NewFile(uintptr(fds[1]), "template-state")
	if err := Sealed(ram); err != nil {
		ram.Close()
		state.Close()
		return nil, nil, err
	}
	return ram, state, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("template: fetch: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err == nil {
			fds = append(fds, got...)
		}
	}
	return fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Hold serves ram and state (sealed) on dir's socket until asked to stop.
// Only root may fetch: the files are every template VM's memory.
func Hold(dir string, ram, state *os.File) error {
	for _, f := range []*os.File{ram, state} {
		if err := Sealed(f); err != nil {
			return err
		}
	}
	sock := filepath.Join(dir, SockName)
	if Alive(dir) {
		return fmt.Errorf("template: a holder already serves %s", sock)
	}
	_ = os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	defer ln.Close()
	if err := os.Chmod(sock, 0o600); err != nil {
		return fmt.Errorf("template: %w", err)
	}
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return fmt.Errorf("template: accept: %w", err)
		}
		if stop := serve(c, ram, state); stop {
			ln.Close()
			_ = os.Remove(sock)
			c.Close()
			return nil
		}
		c.Close()
	}
}

// serve answers one request; it reports whether the holder must stop.
func serve(c *net.UnixConn, ram, state *os.File) (stop bool) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred.Uid != 0 {
		return false
	}
	req := make([]byte, 1)
	if _, err := c.Read(req); err != nil {
		return false
	}
	switch req[0] {
	case reqStop:
		return true
	case reqFetch:
		// A state file of the caller's own, read from its start.
		st, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", state.Fd()))
		if err != nil {
			fmt.Fprintf(os.Stderr, "template: reopen state: %v\n", err)
			return false
		}
		defer st.Close()
		_, _, err = c.WriteMsgUnix([]byte{0}, unix.UnixRights(int(ram.Fd()), int(st.Fd())), nil)
		if err != nil && !errors.Is(err, syscall.EPIPE) {
			fmt.Fprintf(os.Stderr, "template: send: %v\n", err)
		}
	}
	return false
}
