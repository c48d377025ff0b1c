package nic

import (
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/network/nstest"
	"github.com/msb-dev/msb/protocol"
)

// inNICNS runs fn in a new namespace (the agent's, self; nstest.Run) with
// a veth nic0 (a stand-in for a virtio NIC) and a second, empty namespace
// (a container's, ctr, with th a handle there).
func inNICNS(t *testing.T, fn func(self, ctr netns.NsHandle, th *netlink.Handle, nic netlink.Link)) {
	t.Helper()
	nstest.Run(t, func(path string, peers netns.NsHandle) {
		self, err := netns.GetFromPath(path)
		if err != nil {
			t.Fatal(err)
		}
		defer self.Close()
		ctr, err := netns.New()
		if err != nil {
			t.Fatal(err)
		}
		defer ctr.Close()
		if err := netns.Set(self); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "nic0"}, PeerName: "nic0p", PeerNamespace: netlink.NsFd(peers)}); err != nil {
			t.Fatal(err)
		}
		nic, err := netlink.LinkByName("nic0")
		if err != nil {
			t.Fatal(err)
		}
		th, err := netlink.NewHandleAt(ctr, unix.NETLINK_ROUTE)
		if err != nil {
			t.Fatal(err)
		}
		defer th.Close()
		fn(self, ctr, th, nic)
	})
}

func addrsOf(t *testing.T, h *netlink.Handle, l netlink.Link) string {
	t.Helper()
	as, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range as {
		out = append(out, a.IPNet.String())
	}
	return strings.Join(out, ",")
}

func routesOf(t *testing.T, h *netlink.Handle, l netlink.Link) string {
	t.Helper()
	rs, err := h.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if r.Protocol != unix.RTPROT_KERNEL {
			out = append(out, routeKey(r))
		}
	}
	return strings.Join(out, ";")
}

// TestNICUpdateAndRelease configures a NIC into a container's namespace,
// brings it to a new configuration in place (name, MAC, addresses,
// routes) and gives it back to the agent's namespace as a spare.
func TestNICUpdateAndRelease(t *testing.T) {
	inNICNS(t, func(self, ctr netns.NsHandle, th *netlink.Handle, nic netlink.Link) {
		boot := nic.Attrs().HardwareAddr
		n := protocol.NetInterface{BootMAC: boot.String(), Name: "eth1", MAC: "02:00:00:00:00:11", MTU: 1400,
			Addrs: []string{"10.7.0.2/24"}, Routes: []protocol.Route{{Dst: "10.8.0.0/16", Gateway: "10.7.0.1"}}}
		if err := Configure(th, ctr, n); err != nil {
			t.Fatal(err)
		}
		l, err := th.LinkByName("eth1")
		if err != nil || l.Attrs().HardwareAddr.String() != n.MAC || l.Attrs().MTU != 1400 {
			t.Fatalf("eth1 in the container: %+v, %v", l, err)
		}

		n.Name, n.MAC = "eth2", "02:00:00:00:00:22"
		n.Addrs = []string{"10.7.0.3/24", "10.9.0.3/24"}
		n.Routes = []protocol.Route{{Dst: "0.0.0.0/0", Gateway: "10.9.0.1"}}
		if err := Update(th, l, n); err != nil {
			t.Fatal(err)
		}
		l, err = th.LinkByName("eth2")
		if err != nil || l.Attrs().HardwareAddr.String() != n.MAC || l.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("eth2 after update: %+v, %v", l, err)
		}
		if got := addrsOf(t, th, l); got != "10.7.0.3/24,10.9.0.3/24" {
			t.Errorf("addresses after update: %s", got)
		}
		if got := routesOf(t, th, l); got != `0.0.0.0/0 via "10.9.0.1" metric 0` {
			t.Errorf("routes after update: %s", got)
		}
		// The same configuration again changes nothing.
		if err := Update(th, l, n); err != nil {
			t.Fatal(err)
		}

		if err := Release(th, self, l, boot); err != nil {
			t.Fatal(err)
		}
		if _, err := th.LinkByName("eth2"); err == nil {
			t.Error("eth2 still in the container's namespace")
		}
		back, err := netlink.LinkByIndex(l.Attrs().Index)
		if err != nil || back.Attrs().HardwareAddr.String() != boot.String() || back.Attrs().Flags&net.FlagUp != 0 {
			t.Fatalf("NIC back in the agent's namespace: %+v, %v; want down with its boot MAC", back, err)
		}
		if got := addrsOf(t, &netlink.Handle{}, back); got != "" {
			t.Errorf("addresses left on the released NIC: %s", got)
		}
		// It serves the next interface, found by its boot MAC again.
		n.Name = "eth1"
		if err := Configure(th, ctr, n); err != nil {
			t.Fatalf("configure the released NIC again: %v", err)
		}
	})
}
