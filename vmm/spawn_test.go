package vmm

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a fake VMM process when MSB_FAKE_VMM is set, so
// Spawn's fd and startup contract is checked against a real child.
func TestMain(m *testing.M) {
	if mode := os.Getenv("MSB_FAKE_VMM"); mode != "" {
		os.Exit(fakeVMM(mode))
	}
	os.Exit(m.Run())
}

func fakeVMM(mode string) int {
	cfgB, err := io.ReadAll(os.NewFile(ConfigFD, "cfg"))
	if err != nil {
		return 10
	}
	cfg, err := DecodeConfig(cfgB)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 11
	}
	startup := os.NewFile(StartupFD, "startup")
	// Prove the config arrived intact and stdin is /dev/null.
	var st, null syscall.Stat_t
	_ = syscall.Fstat(0, &st)
	_ = syscall.Stat("/dev/null", &null)
	fmt.Fprintf(os.Stderr, "fake vmm %s name=%s stdin-null=%v\n", mode, cfg.Name, st.Rdev == null.Rdev)
	switch mode {
	case "ok":
		_ = WriteStartupLine(startup)
		// Attached: exit when the creator's watch pipe closes.
		_, _ = io.Copy(io.Discard, os.NewFile(ParentWatchFD, "watch"))
		return 7
	case "wrongpid":
		fmt.Fprintf(startup, "{\"pid\":%d}\n", os.Getpid()+1)
		time.Sleep(time.Minute)
	case "garbage":
		fmt.Fprintln(startup, "hello")
		time.Sleep(time.Minute)
	case "silent":
		time.Sleep(time.Minute)
	case "die":
		return 3
	}
	return 0
}

func testConfig(t *testing.T) *LaunchConfig {
	dir := t.TempDir()
	return &LaunchConfig{
		Version: ConfigVersion, Name: "c1", Backend: BackendQEMU, RuntimeDir: dir,
		AgentSocket: filepath.Join(dir, "a.sock"), VCPUs: 1, MemoryMiB: 128, Kernel: "/k",
		Env: []string{"MSB_HOSTNAME=h"},
	}
}

func spawnFake(t *testing.T, mode string, cfg *LaunchConfig) (*Handle, error) {
	t.Setenv("MSB_FAKE_VMM", mode)
	return Spawn(cfg, SpawnOptions{
		Binary: os.Args[0], Log: filepath.Join(cfg.RuntimeDir, "vmm.log"),
		StartupTimeout: 2 * time.Second,
	})
}

func TestSpawnAttachedLifeline(t *testing.T) {
	cfg := testConfig(t)
	h, err := spawnFake(t, "ok", cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
		t.Fatal("VMM exited while its creator holds the watch pipe")
	case <-time.After(200 * time.Millisecond):
	}
	if err := h.Release(); err != nil {
		t.Fatal(err)
	}
	code, err := h.Wait()
	if err != nil || code != 7 {
		t.Fatalf("exit = %d, %v; want 7", code, err)
	}
	log, _ := os.ReadFile(filepath.Join(cfg.RuntimeDir, "vmm.log"))
	if !strings.Contains(string(log), "name=c1 stdin-null=true") {
		t.Fatalf("log = %q", log)
	}
	assertNoTempFiles(t, cfg.RuntimeDir)
}

func TestSpawnFailuresKillAndRelease(t *testing.T) {
	for mode, want := range map[string]string{
		"wrongpid": "startup line names pid",
		"garbage":  "bad startup line",
		"silent":   "no startup line within",
		"die":      "startup pipe closed",
	} {
		t.Run(mode, func(t *testing.T) {
			cfg := testConfig(t)
			fdsBefore := countFDs(t)
			_, err := spawnFake(t, mode, cfg)
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "vmm.log") {
				t.Fatalf("err = %v; want %q naming the log", err, want)
			}
			if n := countFDs(t); n != fdsBefore {
				t.Fatalf("fds: %d before, %d after", fdsBefore, n)
			}
			assertNoTempFiles(t, cfg.RuntimeDir)
		})
	}
}

// TestSpawnSourceFDsOnTargetNumbers occupies fds 3..5 in the parent with
// unrelated files, so the sources Spawn passes sit elsewhere and the child's
// 3..5 must still be exactly the config, watch and startup fds.
func TestSpawnSourceFDsOnTargetNumbers(t *testing.T) {
	var held []int
	for fd := 3; fd <= 5; fd++ {
		if err := syscall.Fstat(fd, &syscall.Stat_t{}); err == nil {
			continue // already in use by the test process
		}
		f, err := os.Open("/dev/zero")
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Dup2(int(f.Fd()), fd); err != nil {
			t.Fatal(err)
		}
		f.Close()
		held = append(held, fd)
	}
	defer func() {
		for _, fd := range held {
			syscall.Close(fd)
		}
	}()
	cfg := testConfig(t)
	h, err := spawnFake(t, "ok", cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = h.Release()
	if code, _ := h.Wait(); code != 7 {
		t.Fatalf("exit %d", code)
	}
}

func TestSpawnRefusesInvalidConfig(t *testing.T) {
	cfg := testConfig(t)
	cfg.Version = ConfigVersion + 1
	if _, err := spawnFake(t, "ok", cfg); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("err = %v", err)
	}
}

func TestConfigRoundTrip(t *testing.T) {
	cfg := testConfig(t)
	cfg.Shares = []Share{{Tag: "t", Path: "/p,q", ReadOnly: true}}
	cfg.Disks = []Disk{{Tag: "d", Path: "/d.img", Format: "qcow2"}}
	cfg.BootTimeout = Duration(90 * time.Second)
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(got)
	if string(b) != string(b2) {
		t.Fatalf("round trip:\n%s\n%s", b, b2)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if m["bootTimeout"] != "1m30s" || m["version"] != float64(ConfigVersion) {
		t.Fatalf("wire form: %s", b)
	}
}

func TestConfigValidation(t *testing.T) {
	for name, mut := range map[string]func(*LaunchConfig){
		"version":    func(c *LaunchConfig) { c.Version = 99 },
		"name":       func(c *LaunchConfig) { c.Name = "" },
		"runtimeDir": func(c *LaunchConfig) { c.RuntimeDir = "rel" },
		"vcpus":      func(c *LaunchConfig) { c.VCPUs = 0 },
		"memoryMiB":  func(c *LaunchConfig) { c.MemoryMiB = 10 },
		"kernel":     func(c *LaunchConfig) { c.Kernel = "" },
		"backend":    func(c *LaunchConfig) { c.Backend = "xen" },
		"accel":      func(c *LaunchConfig) { c.Accel = "hvf" },
		"format":     func(c *LaunchConfig) { c.Disks = []Disk{{Tag: "d", Path: "/x", Format: "vdi"}} },
	} {
		c := testConfig(t)
		mut(c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

// TestAgentSocketPath: a key of any length (a 76-byte containerd namespace
// and a 64-byte id) gives a fixed-length name in the sock dir; only a long
// sock dir is refused.
func TestAgentSocketPath(t *testing.T) {
	long := strings.Repeat("n", 76) + "/" + strings.Repeat("c", 64)
	p, err := AgentSocketPath("/run/msb/shim/sock", long)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(p) != "/run/msb/shim/sock" || len(filepath.Base(p)) != 32+5 {
		t.Fatalf("path %q", p)
	}
	p1, _ := AgentSocketPath("/run/msb/shim/sock", "../../etc/x;y")
	p2, _ := AgentSocketPath("/run/msb/shim/sock", "../../etc/x;z")
	if p1 == p2 || filepath.Dir(p1) != "/run/msb/shim/sock" {
		t.Fatalf("hostile names: %q, %q", p1, p2)
	}
	if _, err := AgentSocketPath("/"+strings.Repeat("r", 80), "x"); err == nil || !strings.Contains(err.Error(), "Unix socket limit") {
		t.Fatalf("long sock dir: %v", err)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func assertNoTempFiles(t *testing.T, dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".launch-") {
			t.Fatalf("launch config temp file left: %s", e.Name())
		}
	}
}
