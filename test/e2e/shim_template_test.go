package e2e

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestShimTemplateStart: with template = true and no pool, the first
// Create's shim has a template VM saved (pool fill) that leaves only its
// holder; containers then start
// from it (their qemu loads the saved state into RAM mapped copy-on-write
// from the holder's sealed memfd, no boot); each guest gets its own RNG
// state, their qemus share the template's pages, and drain ends the
// holder.
func TestShimTemplateStart(t *testing.T) {
	e := startShimEnv(t)
	cfg, cfgPath := configWith(t, "template = true")
	poolRoot := filepath.Join(e.stateRoot, "pool")
	drained := false
	t.Cleanup(func() {
		if !drained {
			poolCmd(t, e, cfg, "drain")
		}
		os.RemoveAll(poolRoot)
	})
	// The first Create finds no template: it boots, and its shim has one
	// saved (pool fill, in the background, with the shim's config on
	// stdin), as on a node after an install.
	e.MustCtr("run", "--rm", "--runtime", msbRuntimeType, "--runtime-config-path", cfgPath, e.image, "tmpl-first", "true")
	var socks []string
	for deadline := time.Now().Add(2 * time.Minute); len(socks) == 0 || len(holders(poolRoot)) == 0; time.Sleep(200 * time.Millisecond) {
		socks, _ = filepath.Glob(filepath.Join(poolRoot, "*", "template.sock"))
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(poolRoot, "fill.log"))
			t.Fatalf("no template held 2 minutes after the first Create: sockets %v; fill.log:\n%s", socks, b)
		}
	}
	if len(socks) != 1 {
		t.Fatalf("after the first Create: template sockets %v, want one", socks)
	}
	if parked := poolEntries(t, poolRoot); len(parked) != 0 {
		t.Fatalf("template = true with pool_size = 0 parked VMs: %v", parked)
	}
	if q := templateQEMUs(poolRoot); len(q) != 0 {
		t.Fatalf("a qemu runs after the template's save: %v", q)
	}

	// Two containers started from the template, cold (nothing parked).
	seeds := map[string]string{}
	for _, id := range []string{"tmpl-a", "tmpl-b"} {
		e.MustCtr("run", "-d", "--runtime", msbRuntimeType, "--runtime-config-path", cfgPath,
			"--mount", "type=tmpfs,destination=/fill,options=size=100m", e.image, id, "sleep", "1000")
		e.waitStatus(t, id, "RUNNING", time.Minute)
		if id == "tmpl-a" {
			templateMemory(t, e, id)
		}
		out := e.MustCtr("task", "exec", "--exec-id", "rnd", id, "sh", "-c", "head -c 16 /dev/urandom | od -An -tx1")
		seeds[id] = strings.Join(strings.Fields(out), "")
		if len(seeds[id]) != 32 {
			t.Fatalf("%s: urandom read %q", id, out)
		}
	}
	if seeds["tmpl-a"] == seeds["tmpl-b"] {
		t.Errorf("two guests from one template read the same random bytes (%s): not reseeded", seeds["tmpl-a"])
	}
	// Each guest's RNG was reseeded from the host (the agent says so on
	// the console): else every guest resumes the template's RNG state.
	logs, _ := filepath.Glob(filepath.Join(poolRoot, "*", "vms", "*", "console.log"))
	reseeded := 0
	for _, l := range logs {
		if b, _ := os.ReadFile(l); strings.Contains(string(b), "RNG reseeded with 64 bytes from the host") {
			reseeded++
		}
	}
	if reseeded != 2 {
		t.Errorf("%d of the guests' consoles (%v) say their RNG was reseeded, want 2", reseeded, logs)
	}
	qemus := templateQEMUs(poolRoot)
	if len(qemus) != 2 {
		t.Fatalf("qemus started from the template: %v, want 2", qemus)
	}
	// Their guest RAM is the template's pages until written: the two
	// mappings' PSS is well below their RSS.
	var rss, pss int
	for _, pid := range qemus {
		r, p := ramMapping(t, pid)
		rss, pss = rss+r, pss+p
	}
	if rss == 0 || pss > rss*3/4 {
		t.Errorf("guest RAM of the two VMs: RSS %d kB, PSS %d kB: the template's pages are not shared", rss, pss)
	}
	t.Logf("guest RAM of two VMs from the template: RSS %d kB, PSS %d kB", rss, pss)

	// A smaller VM (a 64 MiB limit and overhead_mib 128: 192 MiB) starts
	// from the template too, the balloon taking the rest.
	e.MustCtr("run", "-d", "--runtime", msbRuntimeType, "--runtime-config-path", cfgPath,
		"--memory-limit", strconv.Itoa(64<<20), e.image, "tmpl-small", "sleep", "1000")
	e.waitStatus(t, "tmpl-small", "RUNNING", time.Minute)
	if q := templateQEMUs(poolRoot); len(q) != 3 {
		t.Errorf("qemus started from the template with a 192 MiB VM's container: %v, want 3 (it booted)", q)
	}
	out := e.MustCtr("task", "exec", "--exec-id", "mem", "tmpl-small", "awk", "/^MemTotal:/ {print $2}", "/proc/meminfo")
	if kb, _ := strconv.Atoi(strings.TrimSpace(out)); kb>>10 > 192 || kb>>10 < 128 {
		t.Errorf("guest MemTotal of a 192 MiB VM from the template: %d MiB", kb>>10)
	} else {
		t.Logf("guest MemTotal of a 192 MiB VM from the template: %d MiB", kb>>10)
	}
	for _, id := range []string{"tmpl-a", "tmpl-b", "tmpl-small"} {
		e.MustCtr("task", "kill", "-s", "KILL", id)
		e.waitStatus(t, id, "STOPPED", time.Minute)
		e.MustCtr("task", "delete", id)
		e.MustCtr("container", "delete", id)
	}
	e.waitShimDeletes()

	poolCmd(t, e, cfg, "drain")
	drained = true
	if socks, _ := filepath.Glob(filepath.Join(poolRoot, "*", "template.sock")); len(socks) != 0 {
		t.Errorf("after drain: template sockets %v", socks)
	}
	if h := holders(poolRoot); len(h) != 0 {
		t.Errorf("after drain: template holders still run: %v", h)
	}
}

// templateMemory checks a VM started from the template, the only one
// running: memory its guest frees goes back to the host (free page
// reporting, the jail's filter faking the hole punch qemu's sealed RAM
// refuses), and it grows on an update past its size at start (the
// template's RAM has the headroom, ADR 031).
func templateMemory(t *testing.T, e *shimEnv, id string) {
	t.Helper()
	qemus := templateQEMUs(filepath.Join(e.stateRoot, "pool"))
	if len(qemus) != 1 {
		t.Fatalf("qemus started from the template: %v, want 1", qemus)
	}
	e.fillAndFree(t, id, qemus[0], 80, 56)

	memTotal := func() int {
		out := e.MustCtr("task", "exec", "--exec-id", "mem"+strconv.Itoa(time.Now().Nanosecond()), id, "awk", "/^MemTotal:/ {print $2}", "/proc/meminfo")
		kb, _ := strconv.Atoi(strings.TrimSpace(out))
		return kb >> 10
	}
	before := memTotal()
	c, ctx := e.goClient(t)
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 300 MiB and overhead_mib 128: a VM of 428 MiB, within the 512 its
	// 256 may grow to.
	limit := int64(300 << 20)
	if err := task.Update(ctx, client.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})); err != nil {
		t.Fatalf("update the memory limit of a VM from the template to 300 MiB: %v", err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		now := memTotal()
		if now >= before+128 {
			t.Logf("guest MemTotal from the template: %d MiB, %d MiB after the update", before, now)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest MemTotal %d MiB a minute after an update to a 428 MiB VM (%d MiB before)", now, before)
		}
	}
}

// templateQEMUs lists the qemu processes below poolRoot started from a
// template.
func templateQEMUs(poolRoot string) []int {
	var out []int
	for _, pid := range procsWith(poolRoot) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if strings.HasPrefix(filepath.Base(strings.Split(string(b), "\x00")[0]), "qemu-system") && strings.Contains(string(b), "-incoming") {
			out = append(out, pid)
		}
	}
	return out
}

// holders lists the template holder processes of poolRoot.
func holders(poolRoot string) []int {
	var out []int
	for _, pid := range procsWith(poolRoot) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if strings.Contains(string(b), "pool\x00hold\x00") {
			out = append(out, pid)
		}
	}
	return out
}

// procsWith lists the processes whose command line mentions s.
func procsWith(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline"); err == nil && strings.Contains(string(b), s) {
			out = append(out, pid)
		}
	}
	return out
}

// ramMapping returns the RSS and PSS (kB) of pid's mapping of the
// template's RAM (a memfd).
func ramMapping(t *testing.T, pid int) (rss, pss int) {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 {
			continue
		}
		if strings.Contains(fs[0], "-") && len(fs) >= 5 {
			in = strings.Contains(sc.Text(), "memfd:msb-template-ram")
			continue
		}
		if in && len(fs) >= 2 {
			n, _ := strconv.Atoi(fs[1])
			switch fs[0] {
			case "Rss:":
				rss += n
			case "Pss:":
				pss += n
			}
		}
	}
	return rss, pss
}
