// Command bootinit is a throwaway /init for the boot test (TestBoot): it loads the
// modules listed in /etc/msb/modules, lists what the virtio devices produced, mounts
// the 9p share and the virtio-blk disk, prints "GUEST-OK <release>" and powers off.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	// The initramfs links /sbin/modprobe to /init for the kernel's
	// request_module: this init is not a modprobe, so it must not go on
	// (and power the VM off) when the kernel asks for a module.
	if filepath.Base(os.Args[0]) == "modprobe" {
		os.Exit(1)
	}
	start := time.Now()
	console, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		console = os.Stdout
	}
	say := func(format string, a ...any) { fmt.Fprintf(console, format+"\n", a...) }
	defer func() {
		if r := recover(); r != nil {
			say("GUEST-FAIL panic: %v", r)
		}
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}()

	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil {
			say("GUEST-FAIL mount %s: %v", m.dst, err)
			return
		}
	}

	if up, err := os.ReadFile("/proc/uptime"); err == nil {
		say("UPTIME-AT-INIT %ss", strings.Fields(string(up))[0])
	}

	list, err := os.ReadFile("/etc/msb/modules")
	if err != nil {
		say("GUEST-FAIL %v", err)
		return
	}
	var loaded []string
	for _, p := range strings.Fields(string(list)) {
		f, err := os.Open(p)
		if err != nil {
			say("GUEST-FAIL open %s: %v", p, err)
			return
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			say("GUEST-FAIL load %s: %v", p, err)
			return
		}
		loaded = append(loaded, strings.TrimSuffix(filepath.Base(p), ".ko"))
	}
	say("MODULES %s", strings.Join(loaded, " "))

	// Devices probe asynchronously after the driver loads; wait briefly for them.
	var ports, blocks []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ports, blocks = nil, nil
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, n := range names {
			b, _ := os.ReadFile(n)
			ports = append(ports, filepath.Base(filepath.Dir(n))+"="+strings.TrimSpace(string(b)))
		}
		bl, _ := filepath.Glob("/sys/block/*")
		for _, b := range bl {
			blocks = append(blocks, filepath.Base(b))
		}
		if len(ports) > 0 && hasVD(blocks) {
			break
		}
	}
	say("PORTS %s", strings.Join(ports, " "))
	say("BLOCK %s", strings.Join(blocks, " "))
	// No udev here, so no /dev/virtio-ports/<name> symlink: find the port by its
	// sysfs name; devtmpfs has created /dev/vportNpM.
	for _, p := range ports {
		dev, name, _ := strings.Cut(p, "=")
		if name == "msb.agent" {
			if _, err := os.Stat("/dev/" + dev); err == nil {
				say("AGENT-PORT msb.agent=/dev/%s", dev)
			}
		}
	}

	_ = os.MkdirAll("/mnt/share", 0o755)
	if err := unix.Mount("share0", "/mnt/share", "9p", 0, "trans=virtio,version=9p2000.L,msize=262144"); err != nil {
		say("SHARE-FAIL %v", err)
	} else if b, err := os.ReadFile("/mnt/share/hello"); err == nil {
		say("SHARE %s", bytes.TrimSpace(b))
	} else {
		say("SHARE mounted (%v)", err)
	}
	_ = os.MkdirAll("/mnt/disk", 0o755)
	if err := unix.Mount("/dev/vda", "/mnt/disk", "ext4", 0, ""); err != nil {
		say("DISK-FAIL %v", err)
	} else if b, err := os.ReadFile("/mnt/disk/hello"); err == nil {
		say("DISK %s", bytes.TrimSpace(b))
	} else {
		say("DISK mounted (%v)", err)
	}
	_ = os.MkdirAll("/mnt/ovl", 0o755)
	for _, d := range []string{"/run/lower", "/run/upper", "/run/work"} {
		_ = os.MkdirAll(d, 0o755)
	}
	if err := unix.Mount("overlay", "/mnt/ovl", "overlay", 0, "lowerdir=/run/lower,upperdir=/run/upper,workdir=/run/work"); err != nil {
		say("OVERLAY-FAIL %v", err)
	} else {
		say("OVERLAY ok")
	}

	var u unix.Utsname
	_ = unix.Uname(&u)
	say("INIT-TIME %dms", time.Since(start).Milliseconds())
	say("GUEST-OK %s", unix.ByteSliceToString(u.Release[:]))
}

func hasVD(blocks []string) bool {
	for _, b := range blocks {
		if strings.HasPrefix(b, "vd") {
			return true
		}
	}
	return false
}
