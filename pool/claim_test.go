package pool

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/launch"
	"github.com/msb-dev/msb/vmm"
)

// fakeVMMEnv makes the test binary a parked pool VM's VMM: it serves one
// claim on the lifeline socket the variable names (the VMM's side of
// vmm.Adopt: one line in, "{}" out) and exits when that connection
// closes, as the real one shuts its guest down.
const fakeVMMEnv = "MSB_POOL_TEST_FAKE_VMM"

func TestMain(m *testing.M) {
	if path := os.Getenv(fakeVMMEnv); path != "" {
		os.Exit(fakeVMM(path))
	}
	os.Exit(m.Run())
}

func fakeVMM(lifeline string) int {
	ln, err := net.Listen("unix", lifeline)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Stdout.WriteString("ready\n")
	conn, err := ln.Accept()
	ln.Close()
	if err != nil {
		return 1
	}
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		return 1
	}
	if _, err := conn.Write([]byte("{}\n")); err != nil {
		return 1
	}
	_, _ = r.ReadByte() // until the claimer lets go
	return 0
}

// parkFake starts a fake VMM and publishes its entry in p's bucket for c,
// as boot does once the VM is parked. It returns the entry and a channel
// closed when the process has exited.
func parkFake(t *testing.T, p Pool, c config.Config, id string) (*Entry, <-chan struct{}) {
	t.Helper()
	b := p.bucket(Fingerprint(c, p.Binary))
	stateDir := vmm.StateDirPath(b.dir, id)
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	lifeline := filepath.Join(b.dir, id+".life")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fakeVMMEnv+"="+lifeline)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("fake VMM: %q, %v", line, err)
	}
	cfg := &vmm.LaunchConfig{RuntimeDir: stateDir, AgentSocket: filepath.Join(b.dir, id+".sock"), Lifeline: lifeline}
	start, ok := vmm.ProcStart(cmd.Process.Pid)
	if !ok {
		t.Fatal("fake VMM gone")
	}
	e := &Entry{ID: id, VMRecord: launch.VMRecord{Pid: cmd.Process.Pid, PidStart: start, StateDir: stateDir, AgentSocket: cfg.AgentSocket}, Launch: cfg}
	if err := b.write(e); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // entries are ordered by their files' times
	return e, done
}

func testPool(t *testing.T) (Pool, config.Config) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "msb-runtime")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := config.Default()
	c.PoolSize = 2
	return Pool{Root: filepath.Join(dir, "pool"), Binary: bin, Logf: t.Logf}, c
}

func closed(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// TestClaim: a claim adopts the oldest parked VM, and only once; a VM
// that died in the pool is cleared away (state dir gone) and the next one
// taken; releasing the claimer's handle ends the VM; an empty pool gives
// nil.
func TestClaim(t *testing.T) {
	p, c := testPool(t)
	dead, deadDone := parkFake(t, p, c, "dead")
	first, firstDone := parkFake(t, p, c, "first")
	second, _ := parkFake(t, p, c, "second")
	if err := unix.Kill(dead.Pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !closed(deadDone, 5*time.Second) {
		t.Fatal("could not kill the dead VM's VMM")
	}

	e, h, err := p.Claim(c, vmm.Claim{})
	if err != nil || e == nil {
		t.Fatalf("claim: %v, %v", e, err)
	}
	if e.ID != first.ID || h.Pid != first.Pid {
		t.Fatalf("claimed %s, want the oldest live one, %s", e.ID, first.ID)
	}
	if _, err := os.Stat(dead.StateDir); !os.IsNotExist(err) {
		t.Errorf("the dead VM's state dir %s was not cleared", dead.StateDir)
	}
	e2, h2, err := p.Claim(c, vmm.Claim{})
	if err != nil || e2 == nil || e2.ID != second.ID {
		t.Fatalf("second claim: %v, %v", e2, err)
	}
	if e3, _, err := p.Claim(c, vmm.Claim{}); e3 != nil || err != nil {
		t.Fatalf("an empty pool gave %v, %v", e3, err)
	}
	if err := h.Stop(nil); err != nil {
		t.Fatal(err)
	}
	if !closed(firstDone, time.Second) {
		t.Error("the claimed VM outlived its claimer's Stop")
	}
	_ = h2.Stop(nil)
}

// TestClaimRacesDrain: claims racing a drain never share a VM, and every
// VM ends up either claimed by exactly one claimer or stopped and removed
// by the drain.
func TestClaimRacesDrain(t *testing.T) {
	p, c := testPool(t)
	const n = 6
	entries := map[string]*Entry{}
	dones := map[string]<-chan struct{}{}
	for i := 0; i < n; i++ {
		e, done := parkFake(t, p, c, fmt.Sprintf("vm%d", i))
		entries[e.ID], dones[e.ID] = e, done
	}
	var mu sync.Mutex
	claimed := map[string]*vmm.Handle{}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				e, h, err := p.Claim(c, vmm.Claim{})
				if err != nil {
					t.Error(err)
					return
				}
				if e == nil {
					return
				}
				mu.Lock()
				if claimed[e.ID] != nil {
					t.Errorf("%s claimed twice", e.ID)
				}
				claimed[e.ID] = h
				mu.Unlock()
			}
		}()
	}
	if err := p.Drain(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for id, e := range entries {
		if h := claimed[id]; h != nil {
			if closed(dones[id], 100*time.Millisecond) {
				t.Errorf("%s: a claimed VM was stopped", id)
			}
			_ = h.Stop(nil)
			continue
		}
		if !closed(dones[id], 5*time.Second) {
			t.Errorf("%s: neither claimed nor stopped by the drain", id)
		}
		if _, err := os.Stat(e.StateDir); !os.IsNotExist(err) {
			t.Errorf("%s: drained, but its state dir is left", id)
		}
	}
	t.Logf("%d of %d claimed while draining", len(claimed), n)
}
