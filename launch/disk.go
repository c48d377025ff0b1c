package launch

import (
	"fmt"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/mounts"
)

// checkDiskImages refuses block mounts whose image names other host files
// (a qcow2 backing or external data file, vmdk extents or a parent): the
// hypervisor opens them as root, so an image from a container's author
// could hand the guest any file of the host (ADR 016). allow is the
// config's allow_disk_backing_files.
func checkDiskImages(ms []mounts.Mount, allow bool) error {
	if allow {
		return nil
	}
	for _, m := range ms {
		if m.Kind != mounts.KindBlock {
			continue
		}
		refs, err := mounts.ImageReferences(m.Source, m.Format)
		if err != nil {
			return fmt.Errorf("mounts[%d] %s: disk image %s (%s): %w", m.Index, m.Destination, m.Source, m.Format, err)
		}
		if len(refs) > 0 {
			return fmt.Errorf("mounts[%d] %s: disk image %s (%s) refers to %s, which the hypervisor would open as root on the host: "+
				"make it self-contained (qemu-img convert -O %s %s flat.%s) and mount that, or set allow_disk_backing_files = true in %s where image authors are trusted",
				m.Index, m.Destination, m.Source, m.Format, refs, m.Format, m.Source, m.Format, config.DefaultPath)
		}
	}
	return nil
}
