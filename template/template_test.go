package template

import (
	"errors"
	"io"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHoldFetch: a holder hands out its sealed RAM (no write reaches it,
// a private mapping may) and a state file read from its start on every
// fetch; an unsealed file is refused; Stop ends the holder.
func TestHoldFetch(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the holder serves root only")
	}
	dir := t.TempDir()
	ram, err := NewFile("ram", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	state, err := NewFile("state", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ram.WriteAt([]byte("guest"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Write([]byte("device state")); err != nil {
		t.Fatal(err)
	}
	if err := Hold(dir, ram, state); err == nil {
		t.Fatal("Hold took unsealed files")
	}
	for _, f := range []*os.File{ram, state} {
		if err := Seal(f); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- Hold(dir, ram, state) }()
	deadline := time.Now().Add(10 * time.Second)
	for !Alive(dir) {
		if time.Now().After(deadline) {
			t.Fatal("holder does not answer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 2; i++ {
		r, s, err := Fetch(dir + "/" + SockName)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(s); string(b) != "device state" {
			t.Fatalf("fetch %d: state %q", i, b)
		}
		// A reopen for writing succeeds (qemu 7.2 opens its RAM file so),
		// a write does not.
		w, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(r.Fd())), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt([]byte("evil!"), 0); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("write to the template's RAM: %v, want EPERM", err)
		}
		m, err := unix.Mmap(int(w.Fd()), 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
		if err != nil {
			t.Fatalf("private mapping: %v", err)
		}
		copy(m, "mine!")
		unix.Munmap(m)
		buf := make([]byte, 5)
		if _, err := r.ReadAt(buf, 0); err != nil || string(buf) != "guest" {
			t.Fatalf("the template's RAM reads %q, %v after a private write", buf, err)
		}
		w.Close()
		r.Close()
		s.Close()
	}
	if err := Stop(dir); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if Alive(dir) {
		t.Fatal("holder answers after Stop")
	}
}
