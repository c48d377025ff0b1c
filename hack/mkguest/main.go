// Command mkguest builds the msb guest image (vmlinux, vmlinuz, initrd.cpio, ...) with
// package guest. Developer tool; see docs/guest-image.md and hack/build-guest-image.sh.
//
//	go run ./hack/mkguest -agent AGENT [-runtime crun] [-crun CRUN] -out DIR [-kernel-deb DEB | -kernel-dir DIR]
//	go run ./hack/mkguest -agent AGENT -runtime runc -runc RUNC -out DIR [-kernel-deb DEB | -kernel-dir DIR]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/msb-dev/msb/guest"
)

func main() {
	var o guest.Options
	flag.StringVar(&o.KernelDeb, "kernel-deb", "", "linux-image-*.deb (default: apt-get download the distribution's kernel)")
	flag.StringVar(&o.KernelDir, "kernel-dir", "", "a kernel of msb's own, built by hack/build-kernel.sh (overrides -kernel-deb)")
	flag.StringVar(&o.AgentPath, "agent", "", "static msb-agent binary (becomes /init)")
	flag.StringVar(&o.Runtime, "runtime", guest.RuntimeCrun, "the guest's OCI runtime: crun or runc")
	flag.StringVar(&o.RuncPath, "runc", "", "static runc binary (becomes /sbin/runc; -runtime runc)")
	flag.StringVar(&o.CrunPath, "crun", "/usr/bin/crun", "crun binary, with its shared libraries (becomes /sbin/crun; -runtime crun)")
	flag.StringVar(&o.OutDir, "out", "/var/lib/msb", "output directory")
	flag.Parse()
	if o.AgentPath == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	o.Progress = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	img, err := guest.Build(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkguest:", err)
		os.Exit(1)
	}
	fmt.Printf("OCI runtime %s\nkernel %s\nvmlinux %s\nvmlinuz %s\ninitrd %s\nroot disk %s\n", o.Runtime, img.KernelRelease, img.Vmlinux, img.Bzimage, img.Initrd, img.RootDisk)
}
