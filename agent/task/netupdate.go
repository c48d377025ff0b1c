package task

import (
	"bytes"
	"errors"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/protocol"
)

// movedNIC returns the NIC of the namespace th whose permanent address is
// boot: a VM NIC that Network moved there (its current MAC is the host
// interface's). A link a container made cannot fake a permanent address.
func movedNIC(th *netlink.Handle, boot net.HardwareAddr) netlink.Link {
	links, err := th.LinkList()
	if err != nil {
		return nil
	}
	for _, l := range links {
		if p := l.Attrs().PermHWAddr; len(p) == len(boot) && bytes.Equal(p, boot) {
			return l
		}
	}
	return nil
}

// updateNIC brings l, a NIC Network configured before, to n: name, MAC
// and MTU, then the addresses and routes through it, removing those n no
// longer has (but IPv6 link-local ones and the kernel's own routes).
func updateNIC(th *netlink.Handle, l netlink.Link, n protocol.NetInterface) error {
	mac, err := net.ParseMAC(n.MAC)
	if err != nil {
		return fmt.Errorf("MAC %q: %w: %w", n.MAC, err, errdefs.ErrInvalidArgument)
	}
	a := l.Attrs()
	if a.Name != n.Name || a.HardwareAddr.String() != mac.String() {
		if err := th.LinkSetDown(l); err != nil {
			return fmt.Errorf("set %s down: %w", a.Name, err)
		}
		if a.HardwareAddr.String() != mac.String() {
			if err := th.LinkSetHardwareAddr(l, mac); err != nil {
				return fmt.Errorf("set MAC %s: %w", mac, err)
			}
		}
		if a.Name != n.Name {
			if err := th.LinkSetName(l, n.Name); err != nil {
				return fmt.Errorf("rename %s: %w", a.Name, err)
			}
		}
	}
	if n.MTU > 0 && n.MTU != a.MTU {
		if err := th.LinkSetMTU(l, n.MTU); err != nil {
			return fmt.Errorf("set MTU %d: %w", n.MTU, err)
		}
	}
	want := map[string]bool{}
	for _, s := range n.Addrs {
		addr, err := netlink.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("address %q: %w: %w", s, err, errdefs.ErrInvalidArgument)
		}
		want[addr.IPNet.String()] = true
	}
	have, err := th.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("addresses: %w", err)
	}
	for _, ad := range have {
		if want[ad.IPNet.String()] || (ad.IP.IsLinkLocalUnicast() && ad.IP.To4() == nil) {
			continue
		}
		if err := th.AddrDel(l, &ad); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove address %s: %w", ad.IPNet, err)
		}
	}
	if err := addAddrs(th, l, n.Addrs); err != nil {
		return err
	}
	if err := th.LinkSetUp(l); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	if err := dropRoutes(th, l, n.Routes); err != nil {
		return err
	}
	return addRoutes(th, l, n.Routes)
}

// dropRoutes removes the routes through l that keep lists not (the
// kernel's own and link-local or multicast ones stay).
func dropRoutes(th *netlink.Handle, l netlink.Link, keep []protocol.Route) error {
	want := map[string]bool{}
	for _, r := range keep {
		rt, err := guestRoute(l.Attrs().Index, r)
		if err != nil {
			return err
		}
		want[routeKey(*rt)] = true
	}
	have, err := th.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	for _, r := range have {
		if r.Protocol == unix.RTPROT_KERNEL || (r.Dst != nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast())) || want[routeKey(r)] {
			continue
		}
		if err := th.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove route %s: %w", routeKey(r), err)
		}
	}
	return nil
}

// routeKey names a route by destination, gateway and metric.
func routeKey(r netlink.Route) string {
	dst := "0.0.0.0/0"
	switch {
	case r.Dst != nil:
		dst = r.Dst.String()
	case r.Family == unix.AF_INET6 || (r.Gw != nil && r.Gw.To4() == nil):
		dst = "::/0"
	}
	gw := ""
	if r.Gw != nil {
		gw = r.Gw.String()
	}
	return fmt.Sprintf("%s via %q metric %d", dst, gw, r.Priority)
}

// releaseNIC takes l out of the namespace th into self (the agent's),
// down and with its boot MAC: moving it drops its addresses and routes.
// It is renamed first, by its index, as its name (eth1) may be taken in
// self.
func releaseNIC(th *netlink.Handle, self netns.NsHandle, l netlink.Link, boot net.HardwareAddr) error {
	if err := th.LinkSetDown(l); err != nil {
		return fmt.Errorf("set down: %w", err)
	}
	idx := l.Attrs().Index
	if err := th.LinkSetName(l, fmt.Sprintf("msbnic%d", idx)); err != nil {
		return fmt.Errorf("rename: %w", err)
	}
	if err := th.LinkSetNsFd(l, int(self)); err != nil {
		return fmt.Errorf("move back to the agent's namespace: %w", err)
	}
	back, err := netlink.LinkByIndex(idx)
	if err != nil {
		return fmt.Errorf("find it in the agent's namespace: %w", err)
	}
	if err := netlink.LinkSetHardwareAddr(back, boot); err != nil {
		return fmt.Errorf("restore boot MAC %s: %w", boot, err)
	}
	return nil
}
