package vmmproc

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/msb-dev/msb/vmm"
)

// diskArgs attaches disk i as virtio-blk with serial d.Tag. The image is
// a -blockdev in QEMU's JSON syntax (no option escaping): the format node
// over a file (or host_device) node, O_DIRECT with thread-pool I/O, as
// -drive cache=none,aio=threads did. A qcow2 or vmdk gets "backing": null
// unless d.Backing allows it, so QEMU never opens a backing file named
// inside the image, whatever launch's check of the image missed (ADR 016).
func diskArgs(i int, d vmm.Disk) []string {
	node := fmt.Sprintf("disk%d", i)
	proto := "file"
	if st, err := os.Stat(d.Path); err == nil && st.Mode()&os.ModeDevice != 0 {
		proto = "host_device"
	}
	direct := map[string]bool{"direct": true}
	file := map[string]any{"driver": proto, "filename": d.Path, "aio": "threads", "cache": direct}
	opts := map[string]any{"driver": d.Format, "node-name": node, "file": file, "cache": direct}
	if d.ReadOnly {
		file["read-only"], opts["read-only"] = true, true
	}
	if d.Format != "raw" && !d.Backing {
		opts["backing"] = nil
	}
	b, _ := json.Marshal(opts) // maps of strings and bools: cannot fail
	return []string{"-blockdev", string(b),
		"-device", fmt.Sprintf("virtio-blk-device,drive=%s,serial=%s", node, d.Tag)}
}

// rootDiskSerial names the guest root disk (vmm.LaunchConfig.RootDisk) among the
// guest's disks; no container disk can carry it (launch tags theirs).
const rootDiskSerial = "msb-root"

// rootDiskArgs exports the shared guest root image read-only; its pages are
// cached by the host once for every VM.
func rootDiskArgs(path string) []string {
	file := map[string]any{"driver": "file", "filename": path, "read-only": true, "aio": "threads"}
	b, _ := json.Marshal(map[string]any{"driver": "raw", "node-name": "root", "read-only": true, "file": file})
	return []string{"-blockdev", string(b),
		"-device", "virtio-blk-device,drive=root,serial=" + rootDiskSerial}
}
