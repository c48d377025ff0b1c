package e2e

// Network namespaces the tests make for themselves: a "test host"
// namespace with a bridge (standing in for the host's, which the tests
// never touch), container namespaces wired to it by CNI plugins or, as
// dockerd does, by hand with netlink.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/network"
)

var netnsSeq atomic.Int32

// newNetNS makes a named network namespace (/var/run/netns/<name>, like
// `ip netns add`), deleted when the test ends.
func newNetNS(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("msbt-%d-%d", os.Getpid(), netnsSeq.Add(1))
	err := onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			return err
		}
		h.Close()
		return netns.Set(orig)
	})
	if err != nil {
		t.Fatalf("new netns %s: %v", name, err)
	}
	t.Cleanup(func() { _ = netns.DeleteNamed(name) })
	path := filepath.Join("/var/run/netns", name)
	// lo up, as CNI's loopback plugin or dockerd would.
	h := nsHandle(t, path)
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	return path
}

// onThread runs fn on a locked OS thread and gives the thread back only
// if fn left it in its original network namespace (fn may switch it; the
// main thread's namespace is what /proc/<pid>/ns/net shows).
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		err = fn()
		if cur, cerr := netns.Get(); cerr == nil {
			if cur.Equal(orig) {
				runtime.UnlockOSThread()
			}
			cur.Close()
		}
		errc <- err
	}()
	return <-errc
}

// inNetNS runs fn on a thread inside the namespace at path: sockets it
// makes and processes it starts live there.
func inNetNS(path string, fn func() error) error { return network.InNS(path, fn) }

// nsHandle is a netlink handle in the namespace at path.
func nsHandle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// nsRun runs a command in the namespace at path and returns its output.
func nsRun(path string, name string, args ...string) (string, error) {
	var out []byte
	err := inNetNS(path, func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	return string(out), err
}

// httpGet fetches url with sockets made in the namespace at path,
// retrying until deadline d (a VM's server comes up in seconds under TCG).
func httpGet(path, url string, d time.Duration) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetNS(path, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}, DisableKeepAlives: true}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	deadline := time.Now().Add(d)
	for {
		resp, err := cl.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b), nil
			}
			err = fmt.Errorf("status %s, %v", resp.Status, rerr)
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// serveHTTP serves body on addr from inside the namespace at path until
// the test ends.
func serveHTTP(t *testing.T, path, addr, body string) {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(path, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// testBridge makes the test's "host": a namespace with bridge msbbr0 at
// gw/24 (e.g. 10.88.1.1), up.
func testBridge(t *testing.T, gw string) string {
	t.Helper()
	host := newNetNS(t)
	h := nsHandle(t, host)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "msbbr0"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(gw + "/24")
	if err := h.AddrAdd(br, addr); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	return host
}

// dockerVeth does what dockerd does between task create and start: a
// veth pair in the host namespace, one end on the bridge, the other moved
// into the namespace at target (dockerd: /proc/<task pid>/ns/net),
// renamed eth0, with ip/24 and a default route via gw.
func dockerVeth(t *testing.T, host, target, ip, gw string) {
	t.Helper()
	h := nsHandle(t, host)
	br, err := h.LinkByName("msbbr0")
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("veth%d", netnsSeq.Add(1))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index}, PeerName: name + "c"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.LinkDel(veth) })
	if err := h.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	ns, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	peer, err := h.LinkByName(name + "c")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetNsFd(peer, int(ns.Fd())); err != nil {
		t.Fatal(err)
	}
	// Closed at once: its sockets would keep the task's namespace alive.
	tns, err := netns.GetFromPath(target)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := netlink.NewHandleAt(tns, unix.NETLINK_ROUTE)
	tns.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	peer, err = ch.LinkByName(name + "c")
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.LinkSetName(peer, "eth0"); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(ip + "/24")
	if err := ch.AddrAdd(peer, addr); err != nil {
		t.Fatal(err)
	}
	if err := ch.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	if err := ch.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
		t.Fatal(err)
	}
}

// cniBin is where CNI plugins v1.10.0 are (hack/build-cni.sh).
func cniBin(t *testing.T) string {
	t.Helper()
	dir := envOr("MSB_TEST_CNI_BIN", "/var/cache/msb/cni/bin-v1.10.0")
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if !exists(filepath.Join(dir, p)) {
			if os.Getenv("MSB_E2E") == "1" {
				t.Fatalf("CNI plugin %s missing in %s: run hack/build-cni.sh", p, dir)
			}
			t.Skipf("CNI plugin %s missing in %s: run hack/build-cni.sh", p, dir)
		}
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("no iptables for CNI's portmap: apt-get install iptables")
	}
	return dir
}

// cniNet is the test's CNI network: bridge + host-local on subnet, then
// portmap, run as a runtime (containerd's CRI, nerdctl) runs them, from
// the host namespace.
type cniNet struct {
	t      *testing.T
	bin    string
	host   string // the namespace the plugins run in (the test's host)
	subnet string // e.g. 10.88.2.0/24
	data   string
}

func newCNI(t *testing.T, host, subnet string) *cniNet {
	return &cniNet{t: t, bin: cniBin(t), host: host, subnet: subnet, data: t.TempDir()}
}

// plugin runs one CNI plugin and returns its stdout.
func (n *cniNet) plugin(cmd, typ, id, nsPath string, conf map[string]any) ([]byte, error) {
	conf["cniVersion"], conf["name"], conf["type"] = "1.0.0", "msbtest", typ
	in, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	var out, stderr bytes.Buffer
	err = inNetNS(n.host, func() error {
		c := exec.Command(filepath.Join(n.bin, typ))
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + nsPath,
			"CNI_IFNAME=eth0", "CNI_PATH=" + n.bin, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		c.Stdin, c.Stdout, c.Stderr = bytes.NewReader(in), &out, &stderr
		return c.Run()
	})
	if err != nil {
		return nil, fmt.Errorf("CNI %s %s: %v: %s %s", typ, cmd, err, out.String(), stderr.String())
	}
	return out.Bytes(), nil
}

// add attaches the namespace at nsPath (container id) to the network,
// with hostPort → 80 mapped when hostPort > 0, and returns its IP. The
// test's end detaches it.
func (n *cniNet) add(id, nsPath string, hostPort int) string {
	t := n.t
	t.Helper()
	bridge := func() map[string]any {
		return map[string]any{"bridge": "msbcni0", "isGateway": true, "ipam": map[string]any{
			"type": "host-local", "dataDir": n.data, "ranges": [][]map[string]string{{{"subnet": n.subnet}}},
			"routes": []map[string]string{{"dst": "0.0.0.0/0"}}}}
	}
	portmap := func(prev json.RawMessage) map[string]any {
		return map[string]any{"capabilities": map[string]bool{"portMappings": true}, "prevResult": prev,
			"runtimeConfig": map[string]any{"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"}}}}
	}
	res, err := n.plugin("ADD", "bridge", id, nsPath, bridge())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if hostPort > 0 {
			_, _ = n.plugin("DEL", "portmap", id, nsPath, portmap(res))
		}
		_, _ = n.plugin("DEL", "bridge", id, nsPath, bridge())
	})
	if hostPort > 0 {
		if _, err := n.plugin("ADD", "portmap", id, nsPath, portmap(res)); err != nil {
			t.Fatal(err)
		}
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(res, &r); err != nil || len(r.IPs) == 0 {
		t.Fatalf("CNI result %s: %v", res, err)
	}
	ip, _, _ := strings.Cut(r.IPs[0].Address, "/")
	return ip
}

// sameNetNS reports whether two /proc/.../ns/net (or bind-mounted)
// paths are one namespace.
func sameNetNS(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// assertUnwired fails the test if the namespace at path still has an msb
// tap, an ingress qdisc or msb's loopback redirect rule.
func assertUnwired(t *testing.T, path string) {
	t.Helper()
	if rules, err := nsRun(path, "iptables", "-w", "5", "-t", "nat", "-S", "OUTPUT"); err == nil && strings.Contains(rules, "msb") {
		t.Errorf("iptables rule left in %s: %s", path, rules)
	}
	h := nsHandle(t, path)
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "msbtap") {
			t.Errorf("tap %s left in %s", l.Attrs().Name, path)
		}
		qs, _ := h.QdiscList(l)
		for _, q := range qs {
			if q.Type() == "ingress" {
				t.Errorf("ingress qdisc left on %s in %s", l.Attrs().Name, path)
			}
		}
	}
}
