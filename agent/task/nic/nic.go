// Package nic configures the VM's NICs in the guest for a container's
// network namespace (the Agent's Network call, ADR 009): move one there
// with the host interface's name, MAC, MTU, addresses and routes
// (Configure), bring one already there to a changed configuration
// (Moved, Update), take one back for the next interface (Release). It
// knows nothing of containers: the task service finds the namespace.
package nic

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

// Configure moves the NIC booted with n.BootMAC into target (th is a
// handle there) and configures it.
func Configure(th *netlink.Handle, target netns.NsHandle, n protocol.NetInterface) error {
	boot, err := net.ParseMAC(n.BootMAC)
	if err != nil {
		return fmt.Errorf("boot MAC %q: %w: %w", n.BootMAC, err, errdefs.ErrInvalidArgument)
	}
	mac, err := net.ParseMAC(n.MAC)
	if err != nil {
		return fmt.Errorf("MAC %q: %w: %w", n.MAC, err, errdefs.ErrInvalidArgument)
	}
	l, err := linkByMAC(boot)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetDown(l); err != nil {
		return fmt.Errorf("set %s down: %w", l.Attrs().Name, err)
	}
	if l.Attrs().HardwareAddr.String() != mac.String() {
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("set MAC %s: %w", mac, err)
		}
	}
	if n.MTU > 0 && n.MTU != l.Attrs().MTU {
		if err := netlink.LinkSetMTU(l, n.MTU); err != nil {
			return fmt.Errorf("set MTU %d: %w", n.MTU, err)
		}
	}
	if err := netlink.LinkSetNsFd(l, int(target)); err != nil {
		return fmt.Errorf("move %s into the container's namespace: %w", l.Attrs().Name, err)
	}
	// The index is kept across namespaces; the name may clash only here.
	l, err = th.LinkByIndex(l.Attrs().Index)
	if err != nil {
		return fmt.Errorf("find the moved NIC: %w", err)
	}
	if l.Attrs().Name != n.Name {
		if err := th.LinkSetName(l, n.Name); err != nil {
			return fmt.Errorf("rename %s: %w", l.Attrs().Name, err)
		}
	}
	if err := addAddrs(th, l, n.Addrs); err != nil {
		return err
	}
	if err := th.LinkSetUp(l); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return addRoutes(th, l, n.Routes)
}

// addAddrs adds the CIDRs addrs to l (those there already stay).
func addAddrs(th *netlink.Handle, l netlink.Link, addrs []string) error {
	for _, s := range addrs {
		addr, err := netlink.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("address %q: %w: %w", s, err, errdefs.ErrInvalidArgument)
		}
		if addr.IP.To4() == nil {
			addr.Flags |= unix.IFA_F_NODAD // the host side did DAD already
		}
		if err := th.AddrAdd(l, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s: %w", s, err)
		}
	}
	return nil
}

// addRoutes adds routes through l (those there already stay).
func addRoutes(th *netlink.Handle, l netlink.Link, routes []protocol.Route) error {
	for _, r := range routes {
		rt, err := guestRoute(l.Attrs().Index, r)
		if err != nil {
			return err
		}
		if err := th.RouteAdd(rt); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %q: %w", r.Dst, r.Gateway, err)
		}
	}
	return nil
}

func guestRoute(link int, r protocol.Route) (*netlink.Route, error) {
	_, dst, err := net.ParseCIDR(r.Dst)
	if err != nil {
		return nil, fmt.Errorf("route destination %q: %w: %w", r.Dst, err, errdefs.ErrInvalidArgument)
	}
	rt := &netlink.Route{LinkIndex: link, Dst: dst, Priority: r.Metric, Scope: netlink.SCOPE_UNIVERSE}
	if r.Gateway == "" {
		rt.Scope = netlink.SCOPE_LINK
	} else if rt.Gw = net.ParseIP(r.Gateway); rt.Gw == nil {
		return nil, fmt.Errorf("route gateway %q: not an IP address: %w", r.Gateway, errdefs.ErrInvalidArgument)
	}
	if r.Source != "" {
		if rt.Src = net.ParseIP(r.Source); rt.Src == nil {
			return nil, fmt.Errorf("route source %q: not an IP address: %w", r.Source, errdefs.ErrInvalidArgument)
		}
	}
	return rt, nil
}

// linkByMAC finds the agent namespace's link whose address is mac.
func linkByMAC(mac net.HardwareAddr) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list NICs: %w", err)
	}
	for _, l := range links {
		if l.Attrs().HardwareAddr.String() == mac.String() {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no NIC with MAC %s in the VM (it has %d links): %w", mac, len(links), errdefs.ErrNotFound)
}

// Moved returns the NIC of the namespace th whose permanent address is
// boot: a VM NIC that Configure moved there (its current MAC is the host
// interface's). A link a container made cannot fake a permanent address.
func Moved(th *netlink.Handle, boot net.HardwareAddr) netlink.Link {
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

// Update brings l, a NIC Configure configured before, to n: name, MAC
// and MTU, then the addresses and routes through it, removing those n no
// longer has (but IPv6 link-local ones and the kernel's own routes).
func Update(th *netlink.Handle, l netlink.Link, n protocol.NetInterface) error {
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

// Release takes l out of the namespace th into self (the agent's),
// down and with its boot MAC: moving it drops its addresses and routes.
// It is renamed first, by its index, as its name (eth1) may be taken in
// self.
func Release(th *netlink.Handle, self netns.NsHandle, l netlink.Link, boot net.HardwareAddr) error {
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
