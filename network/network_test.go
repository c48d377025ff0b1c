package network

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/msb-dev/msb/network/nstest"
)

// peerNS is where inNewNS's veth peers go (an fd).
var peerNS int

// veth makes an Ethernet link name in the current namespace, its peer in
// peerNS (the kernel here has no dummy links).
func veth(name string, mtu int) error {
	return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: name + "p", PeerNamespace: netlink.NsFd(peerNS)})
}

// inNewNS runs fn in a new network namespace (nstest.Run), whose path it
// gets; veth puts peers in a second one.
func inNewNS(t *testing.T, fn func(path string)) {
	t.Helper()
	nstest.Run(t, func(path string, peers netns.NsHandle) {
		peerNS = int(peers)
		fn(path)
	})
}

func TestPlanSpares(t *testing.T) {
	nics, err := Plan("", 2)
	if err != nil || len(nics) != 2 {
		t.Fatalf("Plan = %v, %v", nics, err)
	}
	for i, n := range nics {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || mac[0]&0x02 == 0 || mac[0]&0x01 != 0 || !n.Spare || n.Tap != fmt.Sprintf("msbtap%d", i) {
			t.Errorf("nic %d = %+v", i, n)
		}
	}
	if nics[0].MAC == nics[1].MAC {
		t.Error("spares share a MAC")
	}
}

func TestPlanRefusesHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	_, err := Plan(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()), 1)
	if err == nil || !strings.Contains(err.Error(), "is the host's") {
		t.Fatalf("err = %v", err)
	}
}

// TestWire plans, creates taps, attaches, reads the guest config and
// detaches in a namespace with a CNI-like eth0.
func TestWire(t *testing.T) {
	inNewNS(t, func(path string) {
		if err := veth("eth0", 1450); err != nil {
			t.Fatal(err)
		}
		eth, _ := netlink.LinkByName("eth0")
		addr, _ := netlink.ParseAddr("10.1.0.2/24")
		if err := netlink.AddrAdd(eth, addr); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			t.Fatal(err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("10.1.0.1")}); err != nil {
			t.Fatal(err)
		}
		l, _ := netlink.LinkByName("eth0")
		nics, err := Plan(path, 1)
		if err != nil || len(nics) != 2 || nics[0].MAC != l.Attrs().HardwareAddr.String() || nics[0].MTU != 1450 || nics[0].Spare ||
			!nics[1].Spare || nics[1].Tap != "msbtap1" {
			t.Fatalf("Plan = %+v, %v; want eth0's NIC and a spare", nics, err)
		}
		fds, err := CreateTaps(nics)
		if err != nil {
			t.Fatal(err)
		}
		tap, err := netlink.LinkByName("msbtap0")
		if err != nil || tap.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("tap: %+v, %v", tap, err)
		}
		if _, err := Plan(path, 1); err == nil || !strings.Contains(err.Error(), "already wired") {
			t.Errorf("second Plan: %v", err)
		}
		ns, err := OpenNS(path)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		s, err := Sync(ns, nics, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		wires, cfg := s.Wires, s.Configs
		if len(wires) != 1 || wires[0] != (Wire{Iface: "eth0", Tap: "msbtap0", Index: l.Attrs().Index}) {
			t.Fatalf("wires = %v", wires)
		}
		c := cfg[0]
		if c.Name != "eth0" || c.BootMAC != nics[0].MAC || c.MAC != nics[0].MAC || c.MTU != 1450 ||
			len(c.Addrs) != 1 || c.Addrs[0] != "10.1.0.2/24" || len(c.Routes) != 1 || c.Routes[0].Dst != "0.0.0.0/0" || c.Routes[0].Gateway != "10.1.0.1" {
			t.Errorf("guest config = %+v", c)
		}
		for _, name := range []string{"eth0", "msbtap0"} {
			l, _ := netlink.LinkByName(name)
			fs, err := netlink.FilterList(l, ingressHandle)
			if err != nil || len(fs) == 0 {
				t.Fatalf("%s: filters %v, %v", name, fs, err)
			}
			u, ok := fs[0].(*netlink.U32)
			if !ok || len(u.Actions) != 1 {
				t.Fatalf("%s: filter %+v", name, fs[0])
			}
			m, ok := u.Actions[0].(*netlink.MirredAction)
			other := "msbtap0"
			if name == "msbtap0" {
				other = "eth0"
			}
			o, _ := netlink.LinkByName(other)
			if !ok || m.Ifindex != o.Attrs().Index || m.MirredAction != netlink.TCA_EGRESS_REDIR {
				t.Errorf("%s: action %+v, want a redirect to %s", name, u.Actions[0], other)
			}
		}
		// Nothing new to wire: Sync again wires nothing.
		if s, err := Sync(ns, nics, wires, false); err != nil || s.Added != 0 || len(s.Wires) != 1 || s.Wires[0] != wires[0] {
			t.Errorf("second Sync = %+v, %v", s, err)
		}
		// An interface with no NIC left fails Sync (eth1 takes the spare).
		for _, name := range []string{"eth1", "eth2"} {
			if err := veth(name, 0); err != nil {
				t.Fatal(err)
			}
		}
		s, err = Sync(ns, nics, wires, false)
		if err == nil || !strings.Contains(err.Error(), "spare_nics") || !strings.Contains(err.Error(), "eth2") {
			t.Errorf("Sync with eth1 and eth2 = %v", err)
		}
		if len(s.Wires) != 2 || s.Wires[1].Iface != "eth1" || s.Wires[1].Tap != "msbtap1" {
			t.Errorf("wires after Sync with eth1 and eth2 = %+v; want eth0's, and eth1 on the spare", s.Wires)
		}
		wires = s.Wires
		dir := t.TempDir()
		if err := SaveWires(dir, wires); err != nil {
			t.Fatal(err)
		}
		if got, err := LoadWires(dir); err != nil || len(got) != 2 || got[0] != wires[0] || got[1] != wires[1] {
			t.Errorf("LoadWires = %v, %v", got, err)
		}
		if err := Detach(ns, wires); err != nil {
			t.Fatal(err)
		}
		qs, _ := netlink.QdiscList(l)
		for _, q := range qs {
			if q.Type() == "ingress" {
				t.Error("ingress qdisc left on eth0")
			}
		}
		for _, f := range fds {
			f.Close()
		}
		if _, err := netlink.LinkByName("msbtap0"); err == nil {
			t.Error("tap outlived its fds")
		}
	})
}
