//go:build cgo

package libkrun

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int32_t (*krun_u32_fn)(uint32_t);
typedef int32_t (*krun_void_fn)(void);
typedef int32_t (*krun_u32u32_fn)(uint32_t, uint32_t);
typedef int32_t (*krun_vmcfg_fn)(uint32_t, uint8_t, uint32_t);
typedef int32_t (*krun_str_fn)(uint32_t, const char *);
typedef int32_t (*krun_str2_fn)(uint32_t, const char *, const char *);
typedef int32_t (*krun_fs3_fn)(uint32_t, const char *, const char *, uint64_t, bool);
typedef int32_t (*krun_disk2_fn)(uint32_t, const char *, const char *, uint32_t, bool);
typedef int32_t (*krun_vsock2_fn)(uint32_t, uint32_t, const char *, bool);
typedef int32_t (*krun_exec_fn)(uint32_t, const char *, char *const *, char *const *);
typedef int32_t (*krun_arr_fn)(uint32_t, char *const *);

static int32_t msb_krun_u32(void *f, uint32_t a) { return ((krun_u32_fn)f)(a); }
static int32_t msb_krun_u32u32(void *f, uint32_t a, uint32_t b) { return ((krun_u32u32_fn)f)(a, b); }
static int32_t msb_krun_void(void *f) { return ((krun_void_fn)f)(); }
static int32_t msb_krun_vmcfg(void *f, uint32_t c, uint8_t v, uint32_t m) { return ((krun_vmcfg_fn)f)(c, v, m); }
static int32_t msb_krun_str(void *f, uint32_t c, const char *s) { return ((krun_str_fn)f)(c, s); }
static int32_t msb_krun_str2(void *f, uint32_t c, const char *a, const char *b) { return ((krun_str2_fn)f)(c, a, b); }
static int32_t msb_krun_fs3(void *f, uint32_t c, const char *a, const char *b, uint64_t s, bool ro) { return ((krun_fs3_fn)f)(c, a, b, s, ro); }
static int32_t msb_krun_disk2(void *f, uint32_t c, const char *a, const char *b, uint32_t fmt, bool ro) { return ((krun_disk2_fn)f)(c, a, b, fmt, ro); }
static int32_t msb_krun_vsock2(void *f, uint32_t c, uint32_t p, const char *s, bool l) { return ((krun_vsock2_fn)f)(c, p, s, l); }
static int32_t msb_krun_exec(void *f, uint32_t c, const char *p, char **argv, char **envp) { return ((krun_exec_fn)f)(c, p, argv, envp); }
static int32_t msb_krun_arr(void *f, uint32_t c, char **a) { return ((krun_arr_fn)f)(c, a); }

// msb_dlopen returns the handle, or NULL and a malloc'ed copy of dlerror()
// (thread-local, so it is read on the thread that called dlopen).
static void *msb_dlopen(const char *path, char **err) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *e = dlerror();
		*err = strdup(e ? e : "unknown dlopen error");
	}
	return h;
}

// libkrun ends the VMM process with exit(): the handler asks Go for the
// exit code to use instead (msbKrunAtExit, -1 = keep libkrun's) after Go
// has removed the VMM's sockets.
extern int msbKrunAtExit(void);
static void msb_krun_atexit(void) {
	int code = msbKrunAtExit();
	if (code >= 0)
		_exit(code);
}
static int msb_register_atexit(void) { return atexit(msb_krun_atexit); }
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Loadable: this build can dlopen libkrun.
const Loadable = true

// dlKrun calls a dlopen'ed libkrun through its resolved symbols.
type dlKrun struct {
	sym map[string]unsafe.Pointer
}

// load dlopens path and resolves the symbols msb uses.
func load(path string) (*Lib, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var cerr *C.char
	h := C.msb_dlopen(cpath, &cerr)
	if h == nil {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		return nil, fmt.Errorf("libkrun is not available (dlopen %s: %s): %s", path, msg, libkrunInstallHint)
	}
	d := &dlKrun{sym: map[string]unsafe.Pointer{}}
	syms := append([]krunSymbol(nil), krunRequired...)
	for _, s := range krunIsolation {
		syms = append(syms, s.krunSymbol)
	}
	for _, s := range syms {
		cname := C.CString(s.name)
		if p := C.dlsym(h, cname); p != nil {
			d.sym[s.name] = p
		}
		C.free(unsafe.Pointer(cname))
	}
	if err := checkSymbols(path, func(n string) bool { return d.sym[n] != nil }); err != nil {
		C.dlclose(h)
		return nil, err
	}
	return &Lib{api: d, path: path}, nil
}

var atExitOnce sync.Once

// atExitHook is called (through the C atexit handler) when libkrun exits
// the process; it returns the exit code to use, or -1 for libkrun's.
var atExitHook atomic.Pointer[func() int]

// AtExit installs the C atexit handler (once) that runs hook when libkrun
// exits the process; hook returns the exit code to use, or -1 to keep
// libkrun's. AtExit(nil) removes the hook.
func AtExit(hook func() int) error {
	var err error
	atExitOnce.Do(func() {
		if C.msb_register_atexit() != 0 {
			err = errors.New("atexit: cannot register the libkrun exit handler")
		}
	})
	if err != nil {
		return err
	}
	if hook == nil {
		atExitHook.Store(nil)
	} else {
		atExitHook.Store(&hook)
	}
	return nil
}

// cstrs is a NULL-terminated C array of C strings, all in C memory.
type cstrs struct {
	p **C.char
	n int
}

func newCstrs(ss []string) cstrs {
	n := len(ss) + 1
	arr := (**C.char)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(uintptr(0)))))
	s := unsafe.Slice(arr, n)
	for i, v := range ss {
		s[i] = C.CString(v)
	}
	return cstrs{arr, n}
}

func (c cstrs) free() {
	for _, p := range unsafe.Slice(c.p, c.n) {
		C.free(unsafe.Pointer(p)) // free(NULL) is a no-op
	}
	C.free(unsafe.Pointer(c.p))
}

func cstr(s string) (*C.char, func()) {
	p := C.CString(s)
	return p, func() { C.free(unsafe.Pointer(p)) }
}

func (d *dlKrun) f(name string) unsafe.Pointer {
	p := d.sym[name]
	if p == nil {
		// checkSymbols guarantees every symbol msb calls.
		fmt.Fprintf(os.Stderr, "msb-vmm: libkrun symbol %s called but not resolved\n", name)
	}
	return p
}

func (d *dlKrun) setLogLevel(level uint32) int32 {
	return int32(C.msb_krun_u32(d.f("krun_set_log_level"), C.uint32_t(level)))
}

func (d *dlKrun) createCtx() int32 { return int32(C.msb_krun_void(d.f("krun_create_ctx"))) }

func (d *dlKrun) setVMConfig(ctx uint32, vcpus uint8, mib uint32) int32 {
	return int32(C.msb_krun_vmcfg(d.f("krun_set_vm_config"), C.uint32_t(ctx), C.uint8_t(vcpus), C.uint32_t(mib)))
}

func (d *dlKrun) str(name string, ctx uint32, s string) int32 {
	p, free := cstr(s)
	defer free()
	return int32(C.msb_krun_str(d.f(name), C.uint32_t(ctx), p))
}

func (d *dlKrun) setWorkdir(ctx uint32, path string) int32 {
	return d.str("krun_set_workdir", ctx, path)
}

func (d *dlKrun) setConsoleOutput(ctx uint32, path string) int32 {
	return d.str("krun_set_console_output", ctx, path)
}

func (d *dlKrun) addVirtiofs(ctx uint32, tag, path string) int32 {
	t, ft := cstr(tag)
	defer ft()
	p, fp := cstr(path)
	defer fp()
	return int32(C.msb_krun_str2(d.f("krun_add_virtiofs"), C.uint32_t(ctx), t, p))
}

func (d *dlKrun) addVirtiofs3(ctx uint32, tag, path string, shmSize uint64, readOnly bool) int32 {
	t, ft := cstr(tag)
	defer ft()
	p, fp := cstr(path)
	defer fp()
	return int32(C.msb_krun_fs3(d.f("krun_add_virtiofs3"), C.uint32_t(ctx), t, p, C.uint64_t(shmSize), C.bool(readOnly)))
}

func (d *dlKrun) addDisk2(ctx uint32, id, path string, format uint32, readOnly bool) int32 {
	i, fi := cstr(id)
	defer fi()
	p, fp := cstr(path)
	defer fp()
	return int32(C.msb_krun_disk2(d.f("krun_add_disk2"), C.uint32_t(ctx), i, p, C.uint32_t(format), C.bool(readOnly)))
}

func (d *dlKrun) addVsockPort2(ctx, port uint32, path string, listen bool) int32 {
	p, fp := cstr(path)
	defer fp()
	return int32(C.msb_krun_vsock2(d.f("krun_add_vsock_port2"), C.uint32_t(ctx), C.uint32_t(port), p, C.bool(listen)))
}

func (d *dlKrun) setExec(ctx uint32, path string, argv, envp []string) int32 {
	p, fp := cstr(path)
	defer fp()
	a, e := newCstrs(argv), newCstrs(envp)
	defer a.free()
	defer e.free()
	return int32(C.msb_krun_exec(d.f("krun_set_exec"), C.uint32_t(ctx), p, a.p, e.p))
}

func (d *dlKrun) arr(name string, ctx uint32, ss []string) int32 {
	a := newCstrs(ss)
	defer a.free()
	return int32(C.msb_krun_arr(d.f(name), C.uint32_t(ctx), a.p))
}

func (d *dlKrun) setEnv(ctx uint32, envp []string) int32 { return d.arr("krun_set_env", ctx, envp) }

func (d *dlKrun) setRlimits(ctx uint32, rl []string) int32 {
	return d.arr("krun_set_rlimits", ctx, rl)
}

func (d *dlKrun) disableImplicitVsock(ctx uint32) int32 {
	return int32(C.msb_krun_u32(d.f("krun_disable_implicit_vsock"), C.uint32_t(ctx)))
}

func (d *dlKrun) addVsock(ctx, tsiFeatures uint32) int32 {
	return int32(C.msb_krun_u32u32(d.f("krun_add_vsock"), C.uint32_t(ctx), C.uint32_t(tsiFeatures)))
}

func (d *dlKrun) startEnter(ctx uint32) int32 {
	return int32(C.msb_krun_u32(d.f("krun_start_enter"), C.uint32_t(ctx)))
}
