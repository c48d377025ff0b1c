//go:build cgo

package jail

/*
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// A process joins a user namespace only while it has one thread, which a
// Go program never has once its runtime started. So the jail helper's
// second stage (an exec of itself after it built qemu's root, ADR 022)
// joins the VM's user namespace here, before the runtime starts, as runc's
// nsexec does, and becomes root of it; the Go code that follows drops
// everything but what qemu keeps. Any other process has no
// _MSB_JAIL_USERNS_FD and returns at once.
__attribute__((constructor)) static void msb_jail_join_userns(void) {
	const char *v = getenv("_MSB_JAIL_USERNS_FD");
	if (v == NULL)
		return;
	int fd = atoi(v);
	if (fd < 3 || setns(fd, CLONE_NEWUSER) != 0) {
		fprintf(stderr, "msb-jail: join the VM's user namespace (fd %s): %s\n", v, strerror(errno));
		_exit(1);
	}
	close(fd);
	if (setresgid(0, 0, 0) != 0 || setgroups(0, NULL) != 0 || setresuid(0, 0, 0) != 0) {
		fprintf(stderr, "msb-jail: become root of the VM's user namespace: %s\n", strerror(errno));
		_exit(1);
	}
}

static int msb_write(const char *path, const char *s) {
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, s, strlen(s));
	int e = n < 0 ? errno : 0;
	close(fd);
	return n < 0 ? -e : 0;
}

// msb_new_userns makes a user namespace with the uid map umap and the gid
// map gmap (lines "inner host size") and returns an fd to it, or -errno. A
// child cloned into it (no Go code runs there: it reads a pipe and exits)
// holds it while its maps are written and the namespace is opened.
static int msb_new_userns(const char *umap, const char *gmap) {
	int p[2], ret = 0, fd = -1;
	char path[64];
	if (pipe2(p, O_CLOEXEC) != 0)
		return -errno;
	pid_t pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
	if (pid < 0) {
		ret = -errno;
		close(p[0]);
		close(p[1]);
		return ret;
	}
	if (pid == 0) {
		char c;
		close(p[1]);
		while (read(p[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(p[0]);
	snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
	ret = msb_write(path, umap);
	if (ret == 0) {
		snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
		ret = msb_write(path, gmap);
	}
	if (ret == 0) {
		snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			ret = -errno;
	}
	close(p[1]);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	return ret < 0 ? ret : fd;
}
*/
import "C"

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"github.com/msb-dev/msb/mounts"
)

// NewUserNS returns a user namespace whose uid and gid maps are a jailed
// qemu's (idMap.lines): the VM's range from base with kept's host ids,
// or with hostIDs the host's ids themselves.
func NewUserNS(base uint32, kept *mounts.KeptIDs, hostIDs bool) (*os.File, error) {
	um, gm := idMap{base: base, hostIDs: hostIDs}, idMap{base: base, hostIDs: hostIDs}
	if kept != nil && !hostIDs {
		um.kept, gm.kept = kept.UIDs, kept.GIDs
	}
	umap, gmap := C.CString(um.lines()), C.CString(gm.lines())
	defer C.free(unsafe.Pointer(umap))
	defer C.free(unsafe.Pointer(gmap))
	fd := C.msb_new_userns(umap, gmap)
	if fd < 0 {
		return nil, fmt.Errorf("user namespace for host ids %d-%d (kept %v, host ids %v): %w", base, base+IDSize-1, kept, hostIDs, syscall.Errno(-fd))
	}
	return os.NewFile(uintptr(fd), "userns"), nil
}

// userNSBuilt: this build can run qemu in a user namespace.
const userNSBuilt = true
