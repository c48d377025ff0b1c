package guest

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// DevCache is where the developer scripts keep downloaded and built artifacts
// (kernel .deb, static runc) for reuse.
const devCache = "/var/cache/msb"

// testKernelDeb returns $MSB_TEST_KERNEL_DEB or the newest cached linux-image .deb.
func testKernelDeb(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MSB_TEST_KERNEL_DEB"); p != "" {
		return p
	}
	m, _ := filepath.Glob(filepath.Join(devCache, "linux-image-*.deb"))
	if len(m) == 0 {
		t.Skipf("no kernel package: set MSB_TEST_KERNEL_DEB or put a linux-image-*.deb in %s", devCache)
	}
	sort.Strings(m)
	return m[len(m)-1]
}

var (
	testImageOnce sync.Once
	testImage     *Image
	testImageLog  string
	testImageErr  error
	testImageDir  string
)

// buildTestImage builds, once per test binary, an image from the test kernel with the
// boot-test init (testdata/bootinit) as the agent.
func buildTestImage(t *testing.T) (*Image, string) {
	t.Helper()
	deb := testKernelDeb(t)
	testImageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "msb-guest-test-")
		if err != nil {
			testImageErr = err
			return
		}
		testImageDir = dir
		agent := filepath.Join(dir, "bootinit")
		cmd := exec.Command("go", "build", "-o", agent, "./testdata/bootinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			testImageErr = fmt.Errorf("building testdata/bootinit: %v\n%s", err, out)
			return
		}
		runc := os.Getenv("MSB_TEST_RUNC")
		if runc == "" {
			runc = filepath.Join(devCache, "runc")
		}
		if _, err := os.Stat(runc); err != nil {
			runc = agent // any static binary does for /sbin/runc here
		}
		var log bytes.Buffer
		testImage, testImageErr = Build(context.Background(), Options{
			KernelDeb: deb, AgentPath: agent, RuncPath: runc,
			OutDir: filepath.Join(dir, "out"), Progress: &log,
		})
		testImageLog = log.String()
	})
	if testImageErr != nil {
		t.Fatal(testImageErr)
	}
	return testImage, testImageLog
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testImageDir != "" {
		os.RemoveAll(testImageDir)
	}
	os.Exit(code)
}

// TestBuildDeb builds an image from a real Debian kernel package.
func TestBuildDeb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a real image (-short)")
	}
	img, log := buildTestImage(t)
	t.Log(log)
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+-`).MatchString(img.KernelRelease) {
		t.Errorf("kernel release %q", img.KernelRelease)
	}
	vm, err := os.ReadFile(img.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPVH(vm); err != nil {
		t.Error(err)
	}
	if f, err := elf.NewFile(bytes.NewReader(vm)); err != nil || f.Machine != elf.EM_X86_64 {
		t.Errorf("vmlinux: %v", err)
	}
	if bz, err := os.ReadFile(img.Bzimage); err != nil || string(bz[0x202:0x206]) != "HdrS" {
		t.Errorf("vmlinuz: %v", err)
	}
	if rel, _ := os.ReadFile(filepath.Join(filepath.Dir(img.Vmlinux), KernelReleaseFile)); string(rel) != img.KernelRelease+"\n" {
		t.Errorf("kernel.release = %q", rel)
	}
	for name, mode := range map[string]os.FileMode{"init": 0o755, "sbin/runc": 0o755} {
		st, err := os.Stat(filepath.Join(img.KrunRoot, name))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("libkrun guest root %s: %v %v", name, st, err)
		}
	}
	if st, err := os.Stat(filepath.Join(img.KrunRoot, "proc")); err != nil || !st.IsDir() {
		t.Errorf("libkrun guest root has no /proc: %v", err)
	}
	var man Manifest
	mj, err := os.ReadFile(filepath.Join(filepath.Dir(img.Vmlinux), ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mj, &man); err != nil {
		t.Fatal(err)
	}
	if man.Version != 1 || man.KernelRelease != img.KernelRelease || len(man.Files) != 4 {
		t.Errorf("manifest: %s", mj)
	}

	// The whole module tree, with its index files, beside the kernel.
	if mt := man.ModuleTree; mt == nil || mt.Dir != ModulesDir+"/"+img.KernelRelease || mt.Modules < 1000 || mt.Aliases < mt.Modules || mt.Bytes == 0 {
		t.Errorf("manifest module tree: %+v", man.ModuleTree)
	}
	treeDir := filepath.Join(img.Modules, img.KernelRelease)
	dep, err := os.ReadFile(filepath.Join(treeDir, ModulesDepFile))
	if err != nil {
		t.Fatal(err)
	}
	alias, _ := os.ReadFile(filepath.Join(treeDir, ModulesAliasFile))
	for _, want := range []string{"\nkernel/net/bridge/bridge.ko", "kernel/net/802/stp.ko"} {
		if !strings.Contains(string(dep), want) {
			t.Errorf("modules.dep lacks %q", want)
		}
	}
	if !strings.Contains(string(alias), "\nalias rtnl-link-bridge bridge\n") {
		t.Errorf("modules.alias lacks rtnl-link-bridge")
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order", ModulesSoftdepFile} {
		if _, err := os.Stat(filepath.Join(treeDir, f)); err != nil {
			t.Error(err)
		}
	}

	ird, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readCpio(bytes.NewReader(ird))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]CpioEntry{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	if e := byName["sbin/modprobe"]; e.Mode&sIFMT != sIFLNK || string(e.Data) != "/init" {
		t.Errorf("initramfs sbin/modprobe: %+v, want a link to /init", e.Name)
	}
	for _, n := range []string{"init", "sbin/runc", "dev/console", "dev/null", "proc", "sys", "run", "tmp", "mnt", "etc/msb/kernel-release"} {
		if _, ok := byName[n]; !ok {
			t.Errorf("initramfs lacks %s", n)
		}
	}
	list := strings.Fields(string(byName["etc/msb/modules"].Data))
	if len(list) != len(man.Modules) {
		t.Errorf("/etc/msb/modules has %d entries, manifest %d", len(list), len(man.Modules))
	}
	seen := map[string]bool{}
	for _, p := range list {
		e, ok := byName[strings.TrimPrefix(p, "/")]
		if !ok {
			t.Errorf("%s listed but not in the initramfs", p)
			continue
		}
		info, err := modinfo(e.Data)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		deps, _ := parseModinfo(info)
		for _, d := range deps {
			if !seen[d] {
				t.Errorf("%s loads before its dependency %s", p, d)
			}
		}
		seen[modName(p)] = true
	}
	for _, m := range Modules {
		if !seen[modName(m)] {
			t.Logf("module %s not loaded (built in?)", m)
		}
	}
}

// TestBoot boots the image under qemu -M microvm (TCG) three times with the
// testdata/bootinit init and checks that it loads the modules, sees the virtio-serial
// port, the virtio-blk disk and the 9p share, and prints GUEST-OK. Needs
// MSB_TEST_BOOT=1, qemu-system-x86_64 and mkfs.ext4.
func TestBoot(t *testing.T) {
	if os.Getenv("MSB_TEST_BOOT") != "1" {
		t.Skip("set MSB_TEST_BOOT=1 to boot the image under qemu")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("mkfs.ext4 not installed")
	}
	img, _ := buildTestImage(t)

	tmp := t.TempDir()
	share := filepath.Join(tmp, "share")
	diskSrc := filepath.Join(tmp, "disksrc")
	disk := filepath.Join(tmp, "disk.img")
	for _, d := range []string{share, diskSrc} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(share, "hello"), []byte("hello-from-share\n"), 0o644)
	os.WriteFile(filepath.Join(diskSrc, "hello"), []byte("hello-from-disk\n"), 0o644)
	if out, err := exec.Command(mkfs, "-q", "-F", "-d", diskSrc, disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}

	runs := 3
	if n, err := strconv.Atoi(os.Getenv("MSB_TEST_BOOT_RUNS")); err == nil && n > 0 {
		runs = n
	}
	var times []time.Duration
	for i := 0; i < runs; i++ {
		sock := filepath.Join(tmp, fmt.Sprintf("agent%d.sock", i))
		args := []string{
			"-machine", "microvm", "-accel", "tcg", "-cpu", "max",
			"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
			"-m", "256", "-smp", "1",
			"-kernel", img.Vmlinux, "-initrd", img.Initrd,
			"-append", "console=ttyS0 quiet panic=-1 tsc_early_khz=" + strconv.Itoa(hostKHz()),
			"-serial", "stdio",
			"-chardev", "socket,id=agent,path=" + sock + ",server=on,wait=off",
			"-device", "virtio-serial-device",
			"-device", "virtserialport,chardev=agent,name=msb.agent",
			"-drive", "if=none,id=d0,file=" + disk + ",format=raw",
			"-device", "virtio-blk-device,drive=d0,serial=disk0",
			"-fsdev", "local,id=fs0,path=" + share + ",security_model=none",
			"-device", "virtio-9p-device,fsdev=fs0,mount_tag=share0",
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		start := time.Now()
		out, err := exec.CommandContext(ctx, qemu, args...).CombinedOutput()
		elapsed := time.Since(start)
		cancel()
		console := string(out)
		if err != nil || !strings.Contains(console, "GUEST-OK "+img.KernelRelease) {
			t.Fatalf("boot %d: %v after %v; console:\n%s", i+1, err, elapsed, console)
		}
		for _, want := range []string{
			"AGENT-PORT msb.agent=/dev/vport", "BLOCK vda", "SHARE hello-from-share",
			"DISK hello-from-disk", "OVERLAY ok",
		} {
			if !strings.Contains(console, want) {
				t.Errorf("boot %d: console lacks %q:\n%s", i+1, want, console)
			}
		}
		if i == 0 {
			t.Logf("console:\n%s", console)
		}
		t.Logf("boot %d: %v", i+1, elapsed.Round(time.Millisecond))
		times = append(times, elapsed)
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	t.Logf("median boot-to-poweroff over %d runs: %v", runs, times[len(times)/2].Round(time.Millisecond))
}

// hostKHz is the TSC frequency to pass as tsc_early_khz (TCG cannot calibrate it
// quickly): from /proc/cpuinfo's "cpu MHz".
func hostKHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 2000000
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
				return int(mhz * 1000)
			}
		}
	}
	return 2000000
}
