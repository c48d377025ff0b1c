package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const ksmDir = "/sys/kernel/mm/ksm"

// ksm turns the host's kernel samepage merging on for the measurement
// and puts its old settings back (restore). qemu marks guest RAM
// mergeable (mem-merge is on by default), so ksmd merges identical guest
// pages across VMs.
type ksm struct {
	old map[string]string
}

// ksmTunables are what enable changes and restore puts back.
var ksmTunables = []string{"run", "pages_to_scan", "sleep_millisecs"}

// enableKSM saves the tunables and starts ksmd scanning pagesToScan pages
// every 20 ms. Call restore even when it fails.
func enableKSM(pagesToScan int) (*ksm, error) {
	k := &ksm{old: map[string]string{}}
	for _, t := range ksmTunables {
		v, err := os.ReadFile(filepath.Join(ksmDir, t))
		if err != nil {
			return k, fmt.Errorf("-ksm: reading %s: %w (a kernel without CONFIG_KSM?)", t, err)
		}
		k.old[t] = strings.TrimSpace(string(v))
	}
	for _, kv := range [][2]string{{"pages_to_scan", strconv.Itoa(pagesToScan)}, {"sleep_millisecs", "20"}, {"run", "1"}} {
		if err := os.WriteFile(filepath.Join(ksmDir, kv[0]), []byte(kv[1]), 0); err != nil {
			return k, fmt.Errorf("-ksm: writing %s: %w", kv[0], err)
		}
	}
	fmt.Printf("KSM on for this run (pages_to_scan %d, sleep_millisecs 20; was run=%s pages_to_scan=%s sleep_millisecs=%s)\n",
		pagesToScan, k.old["run"], k.old["pages_to_scan"], k.old["sleep_millisecs"])
	return k, nil
}

// restore puts back the settings enableKSM found ("run" last, so the scan
// rate is back before ksmd would run with it).
func (k *ksm) restore() {
	if k == nil {
		return
	}
	for i := len(ksmTunables) - 1; i >= 0; i-- {
		t := ksmTunables[i]
		if v, ok := k.old[t]; ok {
			if err := os.WriteFile(filepath.Join(ksmDir, t), []byte(v), 0); err != nil {
				fmt.Fprintf(os.Stderr, "density: restoring KSM's %s=%s: %v\n", t, v, err)
			}
		}
	}
	fmt.Printf("KSM settings restored (run=%s)\n", k.old["run"])
}

func ksmStat(name string) int64 {
	b, _ := os.ReadFile(filepath.Join(ksmDir, name))
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// ksmSettle waits until ksmd has made `scans` more full scans (pages merge
// on the second scan that sees them unchanged) or max passed, and says how
// many pages it shares and the CPU ksmd spent meanwhile.
func ksmSettle(ctx context.Context, scans int64, max time.Duration) string {
	start, t0, cpu0 := ksmStat("full_scans"), time.Now(), cpuTicks(ksmdPid())
	for ksmStat("full_scans") < start+scans && time.Since(t0) < max && ctx.Err() == nil {
		time.Sleep(500 * time.Millisecond)
	}
	el := time.Since(t0)
	cpu := float64(cpuTicks(ksmdPid())-cpu0) / clkTck
	return fmt.Sprintf("KSM: %d full scans in %.0f s, ksmd CPU %.1f s (%.0f %% of one CPU); pages_shared %d, pages_sharing %d (%.1f MiB saved; general_profit %.1f MiB)",
		ksmStat("full_scans")-start, el.Seconds(), cpu, 100*cpu/el.Seconds(),
		ksmStat("pages_shared"), ksmStat("pages_sharing"), float64(ksmStat("pages_sharing"))*4/1024,
		float64(ksmStat("general_profit"))/(1<<20))
}

// ksmdPid finds the ksmd kernel thread; 0 if none.
func ksmdPid() int {
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(b)) == "ksmd" {
			return pid
		}
	}
	return 0
}
