package vmmproc

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/qmp"
	"github.com/msb-dev/msb/vmm"
)

// fakeQEMU answers the QMP commands a resize sends, as a guest that gives
// the balloon what it asks at once, or (stuck) gives nothing back.
type fakeQEMU struct {
	mu          sync.Mutex
	actual      int // MiB
	stuck, fail bool
	log         []string // the balloon's and the host cgroup's settings
}

func (f *fakeQEMU) record(e string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, e)
}

// take returns the log and empties it.
func (f *fakeQEMU) take() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := strings.Join(f.log, ", ")
	f.log = nil
	return s
}

func (f *fakeQEMU) set(stuck, fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stuck, f.fail = stuck, fail
}

func (f *fakeQEMU) serve(conn net.Conn) {
	defer conn.Close()
	fmt.Fprintln(conn, `{"QMP": {"version": {}, "capabilities": []}}`)
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		var m struct {
			Execute   string `json:"execute"`
			Arguments struct {
				Value int64 `json:"value"`
			} `json:"arguments"`
		}
		_ = json.Unmarshal(sc.Bytes(), &m)
		f.mu.Lock()
		reply := `{"return": {}}`
		switch m.Execute {
		case "balloon":
			mib := int(m.Arguments.Value >> 20)
			f.log = append(f.log, fmt.Sprintf("balloon %d", mib))
			if f.fail {
				reply = `{"error": {"class": "GenericError", "desc": "no balloon"}}`
			} else if !f.stuck || mib > f.actual {
				f.actual = mib
			}
		case "query-balloon":
			reply = fmt.Sprintf(`{"return": {"actual": %d}}`, int64(f.actual)<<20)
		}
		f.mu.Unlock()
		fmt.Fprintln(conn, reply)
	}
}

// resizeVM is a VMM's vm of 256 MiB booted with 512, its qemu fake and
// its host cgroup a recorder (limit: the VM's MiB + 100).
func resizeVM(t *testing.T) (*vm, *fakeQEMU) {
	t.Helper()
	f := &fakeQEMU{actual: 256}
	sock := t.TempDir() + "/qmp.sock"
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		if c, err := ln.Accept(); err == nil {
			f.serve(c)
		}
	}()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := qmp.New(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	v := &vm{
		cfg: &vmm.LaunchConfig{MemoryMiB: 256, MaxMemoryMiB: 512},
		hv:  &qemu{mon: &monitor{c: c, changed: make(chan struct{})}},
		host: &hostCgroup{path: "/t",
			setLimit: func(l int64) error { f.record(fmt.Sprintf("host %d", l>>20)); return nil },
			limitFor: func(mib int) int64 { return int64(mib+100) << 20 }},
	}
	return v, f
}

// Up: the host cgroup's limit before the balloon lets the guest have
// it; down: the balloon, then the limit for what the guest gave back;
// past the headroom: refused, nothing set.
func TestSetMemory(t *testing.T) {
	v, f := resizeVM(t)
	step := func(target int, want ...string) vmm.MemoryState {
		t.Helper()
		st, err := v.setMemory(vmm.MemoryRequest{TargetMiB: target})
		if err != nil {
			t.Fatalf("to %d MiB: %v", target, err)
		}
		if got := f.take(); got != strings.Join(want, ", ") {
			t.Errorf("to %d MiB: %q, want %q", target, got, want)
		}
		return st
	}
	if st := step(0); st.TargetMiB != 256 || st.MaxMiB != 512 || st.ActualMiB != 256 {
		t.Errorf("state at start: %+v", st)
	}
	if st := step(400, "host 500", "balloon 400"); st.TargetMiB != 400 || st.HostLimitMiB != 500 {
		t.Errorf("after the grow: %+v", st)
	}
	if st := step(200, "balloon 200", "host 300"); st.TargetMiB != 200 || st.ActualMiB != 200 || st.HostLimitMiB != 300 {
		t.Errorf("after the shrink: %+v", st)
	}
	step(200)
	for _, target := range []int{513, 63} {
		if _, err := v.setMemory(vmm.MemoryRequest{TargetMiB: target}); err == nil || !strings.Contains(err.Error(), "resize_memory_factor") {
			t.Errorf("to %d MiB: %v; want refused naming resize_memory_factor", target, err)
		}
		if got := f.take(); got != "" {
			t.Errorf("to %d MiB: set %q, want nothing", target, got)
		}
	}
}

// A guest that gives nothing back is waited for balloonWait only; the
// host cgroup keeps allowing what it holds. A balloon qemu refuses on a
// grow puts the host cgroup's limit back.
func TestSetMemoryBounded(t *testing.T) {
	v, f := resizeVM(t)
	defer func(d time.Duration) { balloonWait = d }(balloonWait)
	balloonWait = 300 * time.Millisecond
	f.set(true, false)
	start := time.Now()
	st, err := v.setMemory(vmm.MemoryRequest{TargetMiB: 128})
	if err != nil || time.Since(start) > 5*time.Second {
		t.Fatalf("shrink of a stuck guest: %v after %s", err, time.Since(start))
	}
	if st.TargetMiB != 128 || st.ActualMiB != 256 || st.HostLimitMiB != 356 {
		t.Errorf("after a shrink the guest ignored: %+v, want target 128, actual 256, host limit 356", st)
	}
	f.take()
	f.set(true, true)
	if _, err := v.setMemory(vmm.MemoryRequest{TargetMiB: 300}); err == nil {
		t.Fatal("grow with a failing balloon: accepted")
	}
	if got, want := f.take(), "host 400, balloon 300, host 356"; got != want {
		t.Errorf("grow with a failing balloon: %q, want %q", got, want)
	}
}
