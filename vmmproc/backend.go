package vmmproc

import (
	"fmt"
	"os/exec"

	"github.com/msb-dev/msb/kvmprobe"
	"github.com/msb-dev/msb/vmm"
	"github.com/msb-dev/msb/vmmproc/libkrun"
)

// LibkrunSoname is the library the libkrun backend loads when neither
// vmm.LaunchConfig.Libkrun nor $MSB_LIBKRUN names another.
const LibkrunSoname = libkrun.Soname

// LibkrunEnv overrides the libkrun library path (tests, side-by-side
// installs).
const LibkrunEnv = libkrun.Env

// selectBackend resolves cfg.Backend to qemu or libkrun. For libkrun it
// also returns the loaded library. auto takes libkrun when a guest root is
// configured, the KVM device opens read-write and libkrun loads; otherwise
// qemu, and logf says why.
func selectBackend(cfg *vmm.LaunchConfig, logf func(string, ...any)) (string, *libkrun.Lib, error) {
	switch cfg.Backend {
	case vmm.BackendQEMU:
		return vmm.BackendQEMU, nil, nil
	case vmm.BackendLibkrun:
		lib, err := libkrun.Load(cfg)
		if err != nil {
			return "", nil, fmt.Errorf("backend libkrun: %w", err)
		}
		if err := kvmprobe.Check(); err != nil {
			return "", nil, fmt.Errorf("backend libkrun needs %s read-write: %w: load the kvm module, give this user access to %s, or use backend qemu (TCG)", kvmprobe.Device, err, kvmprobe.Device)
		}
		logf("backend libkrun: %s, API %s", lib.Path(), lib.APILevel())
		return vmm.BackendLibkrun, lib, nil
	case vmm.BackendAuto:
	default:
		return "", nil, fmt.Errorf("backend %q unknown: use auto, qemu or libkrun", cfg.Backend)
	}
	if cfg.GuestRoot == "" {
		logf("backend auto: using qemu: no libkrun guest root configured (guestRoot)")
		return vmm.BackendQEMU, nil, nil
	}
	if cfg.Accel == "tcg" {
		logf("backend auto: using qemu: accel tcg was asked for")
		return vmm.BackendQEMU, nil, nil
	}
	if err := kvmprobe.Check(); err != nil {
		logf("backend auto: using qemu under TCG: %s is not usable read-write (%v), libkrun needs KVM", kvmprobe.Device, err)
		return vmm.BackendQEMU, nil, nil
	}
	lib, err := libkrun.Load(cfg)
	if err != nil {
		logf("backend auto: using qemu: %v", err)
		return vmm.BackendQEMU, nil, nil
	}
	logf("backend auto: using libkrun %s, API %s", lib.Path(), lib.APILevel())
	return vmm.BackendLibkrun, lib, nil
}

// BackendStatus is what ProbeBackends found for one backend.
type BackendStatus struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	// Detail is the library or binary found (and the libkrun API level),
	// or why the backend is not available.
	Detail string `json:"detail"`
}

// ProbeBackends reports which backends this host can run, for
// `msb-runtime features` and `--version`. qemuBin is the configured QEMU
// binary ("" = qemu-system-x86_64 from PATH); libkrunPath the configured
// libkrun ("" = $MSB_LIBKRUN or libkrun.so.1); kernel the guest kernel the
// KVM probe boots (KVMUsable).
func ProbeBackends(qemuBin, libkrunLib, kernel string) []BackendStatus {
	kvm := "kvm"
	if err := kvmprobe.Check(); err != nil {
		kvm = "no kvm: " + err.Error()
	}
	var out []BackendStatus
	lk := BackendStatus{Name: vmm.BackendLibkrun}
	lib, err := libkrun.Load(&vmm.LaunchConfig{Libkrun: libkrunLib})
	switch {
	case err != nil:
		lk.Detail = err.Error()
	case kvm != "kvm":
		lk.Detail = fmt.Sprintf("%s, API %s; unusable: %s", lib.Path(), lib.APILevel(), kvm)
	default:
		lk.Available = true
		lk.Detail = fmt.Sprintf("%s, API %s", lib.Path(), lib.APILevel())
	}
	out = append(out, lk)
	if qemuBin == "" {
		qemuBin = "qemu-system-x86_64"
	}
	q := BackendStatus{Name: vmm.BackendQEMU}
	if p, err := exec.LookPath(qemuBin); err != nil {
		q.Detail = fmt.Sprintf("%s not found: install qemu-system-x86", qemuBin)
	} else {
		q.Available = true
		if ok, why := kvmprobe.Usable(p, kernel); ok {
			q.Detail = p + " (kvm)"
		} else {
			q.Detail = fmt.Sprintf("%s (tcg: %s)", p, why)
		}
	}
	return append(out, q)
}
