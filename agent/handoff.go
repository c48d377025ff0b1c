package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/mounts/bootenv"
)

// HandoffRequest asks the init supervisor (PID 1) to exec a user init.
// See docs/adr/003-agent-handoff-init.md.
type HandoffRequest struct {
	// Init is the program, an absolute path inside Root.
	Init string `json:"init"`
	// Root is the guest directory PID 1 chroots into before the exec; "/"
	// means no chroot.
	Root string `json:"root"`
	// Args is argv, argv[0] included.
	Args []string `json:"args"`
	// Env is the environment.
	Env []string `json:"env"`
}

// DefaultHandoffEnv is the handoff init's environment when the boot env
// gives none.
var DefaultHandoffEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux"}

// handoffRequest resolves the boot env's handoff init. Its root is the first
// disk mount, then share mount, whose tree holds the program as an
// executable file, and else the guest root itself: on QEMU the container
// rootfs is a share or disk, on libkrun it is the guest root.
func handoffRequest(e bootenv.Env) (HandoffRequest, error) {
	var roots []string
	for _, d := range e.DiskMounts {
		roots = append(roots, d.GuestPath)
	}
	for _, d := range e.DirMounts {
		roots = append(roots, d.GuestPath)
	}
	roots = append(roots, "/")
	req := HandoffRequest{Init: e.HandoffInit, Args: e.HandoffInitArgs, Env: e.HandoffInitEnv}
	if len(req.Args) == 0 {
		req.Args = []string{e.HandoffInit}
	}
	if len(req.Env) == 0 {
		req.Env = DefaultHandoffEnv
	}
	var why []string
	for _, r := range roots {
		err := executableIn(r, e.HandoffInit)
		if err == nil {
			req.Root = r
			return req, nil
		}
		why = append(why, fmt.Sprintf("%s: %v", r, err))
	}
	return req, fmt.Errorf("boot: handoff init %s is not an executable file under any mount root or / (%s)", e.HandoffInit, strings.Join(why, "; "))
}

// executableIn checks that path, resolved inside root (symlinks included),
// is an executable regular file.
func executableIn(root, path string) error {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, strings.TrimPrefix(filepath.Clean(path), "/"), &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return errors.New("not a regular file")
	}
	if st.Mode&0o111 == 0 {
		return errors.New("not executable")
	}
	return nil
}

// handoffClient is the agent's end of the socket to PID 1.
func handoffClient(c net.Conn) func(HandoffRequest) error {
	return func(req HandoffRequest) error {
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		defer c.SetDeadline(time.Time{})
		if _, err := c.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("ask PID 1: %w", err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("PID 1 did not answer: %w", err)
		}
		line = strings.TrimSpace(line)
		if line != "ok" {
			return errors.New(strings.TrimPrefix(line, "error: "))
		}
		return nil
	}
}

// fileConn wraps an inherited socket fd.
func fileConn(fd uintptr, name string) (net.Conn, error) {
	f := os.NewFile(fd, name)
	if f == nil {
		return nil, fmt.Errorf("fd %d (%s) is not open", fd, name)
	}
	defer f.Close()
	return net.FileConn(f)
}
