package task

import (
	"errors"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/protocol"
)

// Network moves each NIC (found by its boot MAC in the agent's own
// namespace) into the network namespace of container id's init process
// and gives it the host interface's name, MAC, MTU, addresses and routes;
// lo comes up there too. A NIC already there (its permanent address is
// its boot MAC) is brought to the configuration given instead: its host
// interface was renamed or readdressed after start. The container must be
// created; the first call comes before it starts, as with runc, where the
// network is ready before the process runs.
func (s *Service) Network(id string, nics []protocol.NetInterface) error {
	th, target, err := s.containerNet(id)
	if err != nil {
		return err
	}
	defer target.Close()
	defer th.Close()
	if lo, err := th.LinkByName("lo"); err == nil {
		if err := th.LinkSetUp(lo); err != nil {
			return fmt.Errorf("network %s: set lo up: %w", id, err)
		}
	}
	for _, n := range nics {
		boot, err := net.ParseMAC(n.BootMAC)
		if err != nil {
			return fmt.Errorf("network %s: %s: boot MAC %q: %w: %w", id, n.Name, n.BootMAC, err, errdefs.ErrInvalidArgument)
		}
		if l := movedNIC(th, boot); l != nil {
			err = updateNIC(th, l, n)
		} else {
			err = configureNIC(th, target, n)
		}
		if err != nil {
			return fmt.Errorf("network %s: %s: %w", id, n.Name, err)
		}
		log.L.Infof("container %s: %s %s mtu %d addrs %v routes %d", id, n.Name, n.MAC, n.MTU, n.Addrs, len(n.Routes))
	}
	return nil
}

// NetworkRemove takes each NIC (by boot MAC) out of container id's
// network namespace back into the agent's, down, without addresses, with
// its boot MAC: a spare again for the next interface (docker network
// disconnect). A NIC not in the container's namespace is skipped, and a
// container whose init has exited has none left.
func (s *Service) NetworkRemove(id string, nics []protocol.NetInterface) error {
	th, target, err := s.containerNet(id)
	if errors.Is(err, errdefs.ErrFailedPrecondition) {
		return nil // its init is gone, and its namespace with the NICs
	}
	if err != nil {
		return err
	}
	defer target.Close()
	defer th.Close()
	self, err := netns.GetFromPath("/proc/self/ns/net")
	if err != nil {
		return fmt.Errorf("network %s: the agent's network namespace: %w", id, err)
	}
	defer self.Close()
	for _, n := range nics {
		boot, err := net.ParseMAC(n.BootMAC)
		if err != nil {
			return fmt.Errorf("network %s: boot MAC %q: %w: %w", id, n.BootMAC, err, errdefs.ErrInvalidArgument)
		}
		l := movedNIC(th, boot)
		if l == nil {
			continue
		}
		if err := releaseNIC(th, self, l, boot); err != nil {
			return fmt.Errorf("network %s: remove %s: %w", id, l.Attrs().Name, err)
		}
		log.L.Infof("container %s: %s (%s) removed", id, l.Attrs().Name, n.BootMAC)
	}
	return nil
}

// containerNet opens the network namespace of container id's init
// process and a netlink handle there.
func (s *Service) containerNet(id string) (*netlink.Handle, netns.NsHandle, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, 0, err
	}
	_, pid, _, _ := c.init.status()
	if pid == 0 {
		return nil, 0, fmt.Errorf("network %s: container has no init process: %w", id, errdefs.ErrFailedPrecondition)
	}
	target, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, 0, fmt.Errorf("network %s: open the container's network namespace: %w", id, err)
	}
	th, err := netlink.NewHandleAt(target, unix.NETLINK_ROUTE)
	if err != nil {
		target.Close()
		return nil, 0, fmt.Errorf("network %s: netlink in the container's namespace: %w", id, err)
	}
	return th, target, nil
}

// configureNIC moves the NIC booted with n.BootMAC into target (th is a
// handle there) and configures it.
func configureNIC(th *netlink.Handle, target netns.NsHandle, n protocol.NetInterface) error {
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
