// Command mkimage writes a busybox OCI image archive (OCI image layout in a
// tar) from the host's static busybox, for `ctr image import`: no registry
// is reachable where msb is built and tested.
//
//	go run ./hack/mkimage -o busybox.tar -name msb.local/busybox:latest
//	ctr -n default image import busybox.tar
//
// The image has /bin/busybox, a symlink for every applet (`busybox
// --list-full`), /etc/passwd and /etc/group, the usual empty directories
// and Cmd ["sh"]. Output is deterministic for a given busybox binary.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/msb-dev/msb/hack/mkimage/ociimage"
)

func main() {
	out := flag.String("o", "", "output archive (required; - for stdout)")
	name := flag.String("name", ociimage.DefaultName, "image reference")
	busybox := flag.String("busybox", "/bin/busybox", "static busybox binary to put in the image")
	arch := flag.String("arch", "", "image architecture (default: this machine's)")
	cmd := flag.String("cmd", "sh", "default command, words separated by spaces")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: mkimage -o FILE.tar [-name REF] [-busybox PATH] [-arch ARCH] [-cmd 'sh']")
		os.Exit(2)
	}
	opts := ociimage.Options{Name: *name, Busybox: *busybox, Arch: *arch, Cmd: strings.Fields(*cmd)}
	var err error
	if *out == "-" {
		_, err = ociimage.Write(os.Stdout, opts)
	} else {
		desc, werr := ociimage.WriteFile(*out, opts)
		if err = werr; err == nil {
			fmt.Fprintf(os.Stderr, "mkimage: %s (manifest %s) -> %s\n", *name, desc.Digest, *out)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}
