package modprobe

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/protocol"
)

// LoadModules loads the kernel modules listed in list (one path per line,
// absolute or relative to /lib/modules/<release>/, in dependency order). A
// missing list means the kernel needs none.
func LoadModules(list string) error {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	dir := filepath.Join("/lib/modules", KernelRelease())
	var errs []error
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := line
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, line)
		}
		if err := loadModule(p); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if n > 0 || len(errs) > 0 {
		// Every console line costs the boot some 15 ms under TCG (an
		// emulated UART): none for a kernel that needs no modules.
		log.L.Infof("loaded %d kernel modules", n)
	}
	return errors.Join(errs...)
}

func loadModule(path string) error {
	if err := loadModuleParams(path, ""); err != nil {
		return fmt.Errorf("module %s: %w", path, err)
	}
	return nil
}

// modprobePath is where the kernel runs its module helper from
// (/proc/sys/kernel/modprobe); the initramfs links it to the agent.
const modprobePath = "/sbin/modprobe"

// Setup points the kernel's request_module at /sbin/modprobe (the agent,
// multi-call) and mounts the kernel's whole module tree from the
// protocol.ModulesShareTag 9p share at /lib/modules, read-only, with the 9p
// mount options shareOptions, when the VM has that share. Without it only
// the boot-time modules are there. Empty shareOptions means the guest has
// no such share to look for (libkrun's: see the caller).
func Setup(shareOptions string) {
	if _, err := os.Stat("/proc/modules"); errors.Is(err, os.ErrNotExist) {
		log.L.Debugf("kernel %s has no module support: its drivers are built in", KernelRelease())
		return
	}
	const sysctl = "/proc/sys/kernel/modprobe"
	if b, err := os.ReadFile(sysctl); err == nil && strings.TrimSpace(string(b)) != modprobePath {
		if err := os.WriteFile(sysctl, []byte(modprobePath), 0); err != nil {
			log.L.WithError(err).Warnf("set %s", sysctl)
		}
	}
	if shareOptions == "" {
		return
	}
	if !has9pTag(protocol.ModulesShareTag) {
		log.L.Infof("no %s share: only the boot-time kernel modules are available", protocol.ModulesShareTag)
		return
	}
	if err := unix.Mount(protocol.ModulesShareTag, protocol.ModulesGuestDir, "9p",
		unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, shareOptions); err != nil {
		log.L.WithError(err).Errorf("mount the %s share on %s", protocol.ModulesShareTag, protocol.ModulesGuestDir)
		return
	}
	rel := KernelRelease()
	if _, err := os.Stat(filepath.Join(protocol.ModulesGuestDir, rel, "modules.dep")); err != nil {
		log.L.Warnf("the %s share has no module tree for kernel %s: modprobe will find nothing", protocol.ModulesShareTag, rel)
		return
	}
	log.L.Infof("kernel modules of %s on %s (read-only share)", rel, protocol.ModulesGuestDir)
}

// has9pTag reports whether a virtio-9p device with mount tag tag exists.
func has9pTag(tag string) bool {
	paths, _ := filepath.Glob("/sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag")
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil && strings.TrimRight(string(b), "\x00\n") == tag {
			return true
		}
	}
	return false
}

// KernelRelease is the running kernel's release (uname -r): the name of its
// module tree's directory.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
