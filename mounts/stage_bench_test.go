package mounts

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkStageFile compares the two ways a single file reaches a VM's
// stage dir from another filesystem (as Docker's /etc/hosts does from
// /var to /run): a read-only one is copied, a read-write one bind-mounted
// (each including its undo). Run as root:
//
//	go test -run XXX -bench StageFile ./mounts
func BenchmarkStageFile(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for tmpfs and bind mounts")
	}
	src, stage := b.TempDir(), b.TempDir()
	if err := unix.Mount("tmpfs", src, "tmpfs", 0, "size=16m"); err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { _ = unix.Unmount(src, unix.MNT_DETACH) })
	for _, size := range []int{200, 64 << 10} {
		f := filepath.Join(src, "hosts-"+strconv.Itoa(size))
		if err := os.WriteFile(f, make([]byte, size), 0o644); err != nil {
			b.Fatal(err)
		}
		for _, ro := range []bool{true, false} {
			name := map[bool]string{true: "ro-copy", false: "rw-bind"}[ro] + "-" + strconv.Itoa(size) + "B"
			b.Run(name, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					st, err := stageFile(FileStage{Source: f, Dir: filepath.Join(stage, "d"), Name: "hosts", ReadOnly: ro})
					if err != nil {
						b.Fatal(err)
					}
					if err := st.undo(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
