package network

import (
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// upVeth makes an Ethernet link name with the CIDR addr, set up.
func upVeth(t *testing.T, name, addr string) netlink.Link {
	t.Helper()
	if err := veth(name, 0); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(addr)
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

// redirectsTo reports whether from's ingress filter redirects to the
// link of index to.
func redirectsTo(t *testing.T, from string, to int) bool {
	t.Helper()
	l, err := netlink.LinkByName(from)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := netlink.FilterList(l, ingressHandle)
	if err != nil || len(fs) != 1 {
		return false
	}
	u, ok := fs[0].(*netlink.U32)
	if !ok || len(u.Actions) != 1 {
		return false
	}
	m, ok := u.Actions[0].(*netlink.MirredAction)
	return ok && m.Ifindex == to
}

// TestSync follows interfaces that come and go after the VM booted with
// two spares: connect, readdress, run out of spares, disconnect (the NIC
// serves the next interface), and a name that comes back on a new
// interface.
func TestSync(t *testing.T) {
	inNewNS(t, func(path string) {
		nics, err := Plan(path, 2)
		if err != nil || len(nics) != 2 {
			t.Fatalf("Plan = %+v, %v", nics, err)
		}
		fds, err := CreateTaps(nics)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			for _, f := range fds {
				f.Close()
			}
		}()
		ns, err := OpenNS(path)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		tap0, _ := netlink.LinkByName("msbtap0")

		// A down interface waits (its manager has not finished), an up one
		// takes a spare.
		if err := veth("eth0", 0); err != nil {
			t.Fatal(err)
		}
		s, err := Sync(ns, nics, nil, true)
		if err != nil || len(s.Wires) != 0 {
			t.Fatalf("Sync with eth0 down = %+v, %v", s, err)
		}
		eth0, _ := netlink.LinkByName("eth0")
		a, _ := netlink.ParseAddr("10.2.0.2/24")
		if err := netlink.AddrAdd(eth0, a); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(eth0); err != nil {
			t.Fatal(err)
		}
		s, err = Sync(ns, nics, nil, true)
		if err != nil || len(s.Wires) != 1 || s.Added != 1 || s.Wires[0] != (Wire{Iface: "eth0", Tap: "msbtap0", Index: eth0.Attrs().Index}) ||
			s.Configs[0].BootMAC != nics[0].MAC || s.Configs[0].MAC != eth0.Attrs().HardwareAddr.String() || strings.Join(s.Configs[0].Addrs, ",") != "10.2.0.2/24" {
			t.Fatalf("Sync with eth0 up = %+v, %v", s, err)
		}
		if !redirectsTo(t, "eth0", tap0.Attrs().Index) || !redirectsTo(t, "msbtap0", eth0.Attrs().Index) {
			t.Fatal("eth0 and msbtap0 not redirected to each other")
		}

		eth1 := upVeth(t, "eth1", "10.3.0.2/24")
		upVeth(t, "eth2", "10.4.0.2/24")
		s, err = Sync(ns, nics, s.Wires, true)
		if err == nil || !strings.Contains(err.Error(), "eth2") || !strings.Contains(err.Error(), "spare_nics") {
			t.Errorf("Sync with eth2 past the spares: %v; want an error naming eth2 and spare_nics", err)
		}
		if len(s.Wires) != 2 || s.Added != 1 || s.Wires[1] != (Wire{Iface: "eth1", Tap: "msbtap1", Index: eth1.Attrs().Index}) {
			t.Fatalf("Sync with eth1, eth2 = %+v; want eth1 wired, eth2 left", s)
		}

		// A new address on eth1 is in its configuration afresh.
		a, _ = netlink.ParseAddr("10.3.1.2/24")
		if err := netlink.AddrAdd(eth1, a); err != nil {
			t.Fatal(err)
		}
		// Disconnect eth0: its NIC is removed and serves eth2.
		if err := netlink.LinkDel(eth0); err != nil {
			t.Fatal(err)
		}
		wires := s.Wires
		s, err = Sync(ns, nics, wires, true)
		if err != nil || len(s.Removed) != 1 || s.Removed[0].BootMAC != nics[0].MAC || s.Removed[0].Name != "eth0" {
			t.Fatalf("Sync after eth0 left = %+v, %v", s, err)
		}
		if len(s.Wires) != 2 || s.Wires[0].Iface != "eth1" || s.Wires[1].Iface != "eth2" || s.Wires[1].Tap != "msbtap0" || s.Added != 1 {
			t.Fatalf("wires after eth0 left = %+v; want eth1, and eth2 on msbtap0", s.Wires)
		}
		if got := strings.Join(s.Configs[0].Addrs, ","); got != "10.3.0.2/24,10.3.1.2/24" {
			t.Errorf("eth1's addresses after the change: %s", got)
		}
		eth2, _ := netlink.LinkByName("eth2")
		if !redirectsTo(t, "msbtap0", eth2.Attrs().Index) {
			t.Error("msbtap0 does not redirect to eth2")
		}

		// eth1 goes and an eth1 comes back before the next Sync: the new
		// one is wired, not taken for the old.
		if err := netlink.LinkDel(eth1); err != nil {
			t.Fatal(err)
		}
		eth1 = upVeth(t, "eth1", "10.5.0.2/24")
		s, err = Sync(ns, nics, s.Wires, true)
		if err != nil || len(s.Removed) != 1 || s.Removed[0].Name != "eth1" || s.Added != 1 || len(s.Wires) != 2 ||
			s.Wires[1] != (Wire{Iface: "eth1", Tap: "msbtap1", Index: eth1.Attrs().Index}) {
			t.Fatalf("Sync after eth1 came back = %+v, %v", s, err)
		}
		if !redirectsTo(t, "msbtap1", eth1.Attrs().Index) || !redirectsTo(t, "eth1", netlinkIndex(t, "msbtap1")) {
			t.Error("the new eth1 and msbtap1 not redirected to each other")
		}

		// All gone: the taps keep no redirect.
		for _, n := range []string{"eth1", "eth2"} {
			l, _ := netlink.LinkByName(n)
			if err := netlink.LinkDel(l); err != nil {
				t.Fatal(err)
			}
		}
		s, err = Sync(ns, nics, s.Wires, true)
		if err != nil || len(s.Wires) != 0 || len(s.Removed) != 2 {
			t.Fatalf("Sync after all left = %+v, %v", s, err)
		}
		for _, tap := range []string{"msbtap0", "msbtap1"} {
			l, _ := netlink.LinkByName(tap)
			qs, _ := netlink.QdiscList(l)
			for _, q := range qs {
				if q.Type() == "ingress" {
					t.Errorf("ingress qdisc left on %s", tap)
				}
			}
		}
	})
}

func netlinkIndex(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// TestSubscribe sees a link appear in the namespace, and ends on Close.
func TestSubscribe(t *testing.T) {
	inNewNS(t, func(path string) {
		ns, err := OpenNS(path)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		ch, err := Subscribe(ns)
		if err != nil {
			t.Fatal(err)
		}
		if err := veth("eth0", 0); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ch.C:
		case <-time.After(5 * time.Second):
			t.Fatal("no change seen for a new link")
		}
		ch.Close()
		ch.Close() // twice is fine
		deadline := time.After(5 * time.Second)
		for {
			select {
			case _, ok := <-ch.C:
				if !ok {
					return
				}
			case <-deadline:
				t.Fatal("C not closed after Close")
			}
		}
	})
}
