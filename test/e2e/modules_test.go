package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// modulesBundle is a busybox bundle with ip and brctl, whose process has
// exactly caps (CAP_SYS_MODULE never among them).
func modulesBundle(t *testing.T, script string, caps []string) string {
	t.Helper()
	b := bundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	})
	for _, app := range []string{"ip", "brctl"} {
		if err := os.Symlink("busybox", filepath.Join(b, "rootfs/bin", app)); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// hasModuleTree tells whether the guest image has a module tree (a
// distribution kernel) or none (msb's own kernel: everything built in).
func hasModuleTree() bool {
	return exists(filepath.Join(envOr("MSB_TEST_IMAGE", "/var/lib/msb"), "modules"))
}

// The kernel's request_module runs the guest's /sbin/modprobe (the agent)
// for a container with CAP_NET_ADMIN but without CAP_SYS_MODULE: brctl's
// ioctl asks for "bridge", rtnetlink for the alias "rtnl-link-dummy". With
// msb's own kernel the same works because it is built in.
func TestModulesOnDemand(t *testing.T) {
	requireVM(t)
	caps := []string{"CAP_NET_ADMIN", "CAP_KILL", "CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"}
	script := `set -e
grep -E '^(bridge|dummy) ' /proc/modules && { echo "loaded before the test"; exit 3; }
brctl addbr br-test
ip link add d0 type dummy
ip link add br-two type bridge
ip -o link show | grep -oE ' (br-test|d0|br-two)[:@]' | tr -d ' :@' | sort | tr '\n' ' '; echo
grep -oE '^(bridge|dummy|stp|llc) ' /proc/modules 2>/dev/null | sort | tr -d ' ' | tr '\n' ' '; echo
grep CapEff /proc/self/status
cat /proc/sys/kernel/modprobe 2>/dev/null || echo no-modules`
	wantMods, wantHelper := "bridge dummy llc stp ", "/sbin/modprobe"
	if !hasModuleTree() {
		wantMods, wantHelper = "", "no-modules"
	}
	r := run(t, modulesBundle(t, script, caps), "")
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 4 || lines[0] != "br-test br-two d0 " || lines[1] != wantMods || lines[3] != wantHelper {
		t.Fatalf("stdout %q", r.stdout)
	}
	t.Logf("%s", lines[2])
}

// Without CAP_NET_ADMIN rtnetlink refuses before it asks for a module.
func TestModulesNeedNetAdmin(t *testing.T) {
	requireVM(t)
	caps := []string{"CAP_KILL", "CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"}
	script := `ip link add br-test type bridge; echo "ip=$?"; grep -c '^bridge ' /proc/modules || true`
	r := run(t, modulesBundle(t, script, caps), "")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ip=") || strings.HasPrefix(r.stdout, "ip=0") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("stdout %q stderr %q", r.stdout, r.stderr)
}
