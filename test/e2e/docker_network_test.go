package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDockerNetworkConnect connects a running msb container to a new
// network through the shim (Docker v29; ADR 029); see networkConnect.
func TestDockerNetworkConnect(t *testing.T) {
	d := startDocker(t)
	networkConnect(t, d, d.image, func(string) string { return d.Log() })
}

// TestDocker20NetworkConnect is the same through msb-runtime (Docker
// 20.10): the VMM process follows the namespace and logs to its vmm.log.
func TestDocker20NetworkConnect(t *testing.T) {
	d := startDocker20(t)
	networkConnect(t, d, "msb.local/busybox", func(id string) string {
		logs, _ := filepath.Glob(filepath.Join(d.dir, "*", "*", "vms", id, "vmm.log"))
		more, _ := filepath.Glob(filepath.Join(d.dir, "*", "*", "*", "vms", id, "vmm.log"))
		var all string
		for _, l := range append(logs, more...) {
			b, _ := os.ReadFile(l)
			all += string(b)
		}
		return all
	})
}

// networkConnect connects a running msb container, web, to a new network:
// another container on that network reaches it there, its guest has the
// interface and keeps its first network; after disconnect it is
// unreachable there and the guest's interface is gone; a second connect
// reuses the freed NIC; a connect past the spare NICs is refused in
// msbLog(web's id), naming spare_nics, and the rest keeps working.
func networkConnect(t *testing.T, d *dockerEnv, image string, msbLog func(id string) string) {
	serveHTTP(t, d.netns, "0.0.0.0:9091", "bridge-ok")
	d.mustDocker(t, "network", "create", "--subnet", "10.90.0.0/24", "side")
	d.mustDocker(t, "network", "create", "--subnet", "10.91.0.0/24", "third")
	id := strings.TrimSpace(d.mustDocker(t, "run", "-d", "--name", "web", "--runtime", "msb", image,
		"sh", "-c", "mkdir -p /www; echo side-ok > /www/index.html; exec httpd -f -p 8000 -h /www"))
	d.mustDocker(t, "run", "-d", "--name", "client", "--runtime", "msb", "--network", "side", "--ip", "10.90.0.20", image, "sleep", "600")
	fetch := func(url string) (string, error) {
		return d.docker("exec", "client", "timeout", "5", "wget", "-q", "-O-", url)
	}
	t.Cleanup(func() {
		if t.Failed() {
			d.netDiag(t, "web")
			d.netDiag(t, "client")
		}
	})
	const url = "http://10.90.0.10:8000/"
	if out, err := fetch(url); err == nil {
		t.Fatalf("web reachable on side before connect: %q", out)
	}

	d.mustDocker(t, "network", "connect", "--ip", "10.90.0.10", "side", "web")
	waitFetch(t, fetch, url, true)
	if addrs := d.mustDocker(t, "exec", "web", "ip", "-o", "addr"); !strings.Contains(addrs, "inet 10.90.0.10/24") {
		t.Errorf("web's guest after connect:\n%s\nwant 10.90.0.10/24", addrs)
	}
	// The first network still works.
	if out := d.mustDocker(t, "exec", "web", "timeout", "5", "wget", "-q", "-O-", "http://"+dockerBridgeGW+":9091/"); out != "bridge-ok" {
		t.Errorf("web to the bridge's gateway after connect: %q", out)
	}

	d.mustDocker(t, "network", "disconnect", "side", "web")
	waitFetch(t, fetch, url, false)
	if addrs := d.mustDocker(t, "exec", "web", "ip", "-o", "addr"); strings.Contains(addrs, "10.90.0.10") {
		t.Errorf("web's guest after disconnect:\n%s\nwant no 10.90.0.10", addrs)
	}

	// The NIC is free again: a second connect takes it.
	d.mustDocker(t, "network", "connect", "--ip", "10.90.0.11", "side", "web")
	waitFetch(t, fetch, "http://10.90.0.11:8000/", true)

	// web has 2 NICs (spare_nics 2): bridge and side; a third network has
	// none left, and the shim's log (containerd's) says so.
	d.mustDocker(t, "network", "connect", "third", "web")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(msbLog(id), "no spare NIC is left") {
		if time.Now().After(deadline) {
			t.Fatalf("no spare NIC error in msb's log after a third network:\n%s", tail(msbLog(id), 30))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if line := lineWith(msbLog(id), "no spare NIC is left"); !strings.Contains(line, "spare_nics") {
		t.Errorf("msb's log line %q does not name spare_nics", line)
	}
	// side still works.
	waitFetch(t, fetch, "http://10.90.0.11:8000/", true)
	d.mustDocker(t, "rm", "-f", "web", "client")
}

// waitFetch waits (1 min) until fetch(url) serves side-ok (reach) or
// fails (!reach).
func waitFetch(t *testing.T, fetch func(string) (string, error), url string, reach bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := fetch(url)
		if reach && err == nil && out == "side-ok\n" || !reach && err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s reachable = %v after 1m, want %v: %q, %v", url, !reach, reach, out, err)
		}
		time.Sleep(time.Second)
	}
}

// netDiag logs what the guest and the host side of container name's
// network look like, and its VM's logs.
func (d *dockerEnv) netDiag(t *testing.T, name string) {
	for _, args := range [][]string{{"exec", name, "ip", "addr"}, {"exec", name, "ip", "route"}} {
		out, err := d.docker(args...)
		t.Logf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	id, _ := d.docker("inspect", "-f", "{{.Id}}", name)
	id = strings.TrimSpace(id)
	dirs, _ := filepath.Glob(filepath.Join(d.stateRoot, "*", "vms", id))
	more, _ := filepath.Glob(filepath.Join(d.dir, "*", "*", "vms", id))
	dirs = append(dirs, more...)
	for _, dir := range dirs {
		for _, f := range []string{"network.json", "vmm.log", "console.log"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			t.Logf("%s %s:\n%s", name, f, tail(string(b), 40))
		}
	}
	t.Logf("shim log:\n%s", tail(d.Log(), 40))
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
