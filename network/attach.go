package network

import (
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/protocol"
)

// ingressHandle is the handle of the ingress qdisc (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// pick returns the unused NIC made for mac, else the first unused spare,
// else an unused NIC whose own interface is not in the namespace (claimed
// holds the MACs of those that are): it left, and its NIC is free again.
func pick(nics []NIC, used map[string]bool, mac string, claimed map[string]bool) (NIC, bool) {
	for _, n := range nics {
		if !used[n.Tap] && !n.Spare && n.MAC == mac {
			return n, true
		}
	}
	for _, n := range nics {
		if !used[n.Tap] && n.Spare {
			return n, true
		}
	}
	for _, n := range nics {
		if !used[n.Tap] && !claimed[n.MAC] {
			return n, true
		}
	}
	return NIC{}, false
}

// redirect mirrors every frame arriving on each of a and b out of the
// other: an ingress qdisc on both and a match-all u32 filter whose action
// is a mirred egress redirect.
func redirect(h *netlink.Handle, a, b netlink.Link) error {
	if b.Attrs().MTU != a.Attrs().MTU {
		if err := h.LinkSetMTU(b, a.Attrs().MTU); err != nil {
			return fmt.Errorf("set %s MTU to %d: %w", b.Attrs().Name, a.Attrs().MTU, err)
		}
	}
	for _, p := range [][2]netlink.Link{{a, b}, {b, a}} {
		from, to := p[0].Attrs(), p[1].Attrs()
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Index, Parent: netlink.HANDLE_INGRESS, Handle: ingressHandle}}
		if err := h.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ingress qdisc on %s: %w", from.Name, err)
		}
		f := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Index, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
			Actions: []netlink.Action{&netlink.MirredAction{
				ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
				MirredAction: netlink.TCA_EGRESS_REDIR,
				Ifindex:      to.Index,
			}},
		}
		if err := h.FilterAdd(f); err != nil {
			return fmt.Errorf("redirect filter %s -> %s: %w", from.Name, to.Name, err)
		}
	}
	return nil
}

// guestConfig reads what the guest NIC of l takes over: name, MAC, MTU,
// the addresses (but link-local IPv6, which the guest makes itself from
// the same MAC) and the routes through l (but those the kernel derives
// from the addresses).
func guestConfig(h *netlink.Handle, l netlink.Link, nic NIC) (protocol.NetInterface, error) {
	a := l.Attrs()
	ni := protocol.NetInterface{BootMAC: nic.MAC, Name: a.Name, MAC: a.HardwareAddr.String(), MTU: a.MTU}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return ni, fmt.Errorf("addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		if ad.IP.IsLinkLocalUnicast() && ad.IP.To4() == nil {
			continue
		}
		ni.Addrs = append(ni.Addrs, ad.IPNet.String())
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: a.Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return ni, fmt.Errorf("routes of %s: %w", a.Name, err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL || (r.Dst != nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast())) {
			continue
		}
		ni.Routes = append(ni.Routes, guestRoute(r))
	}
	// On-link routes first: a gateway must be reachable when its route is added.
	sort.SliceStable(ni.Routes, func(i, j int) bool { return ni.Routes[i].Gateway == "" && ni.Routes[j].Gateway != "" })
	return ni, nil
}

func guestRoute(r netlink.Route) protocol.Route {
	var gr protocol.Route
	switch {
	case r.Dst != nil:
		gr.Dst = r.Dst.String()
	case r.Family == unix.AF_INET6 || (r.Gw != nil && r.Gw.To4() == nil):
		gr.Dst = "::/0"
	default:
		gr.Dst = "0.0.0.0/0"
	}
	if r.Gw != nil {
		gr.Gateway = r.Gw.String()
	}
	if r.Src != nil {
		gr.Source = r.Src.String()
	}
	gr.Metric = r.Priority
	return gr
}

// Detach removes the ingress qdiscs (and so the redirect filters) that
// Sync put on the wired interfaces of ns. A tap's go with the tap.
// Interfaces already gone are skipped.
func Detach(ns *os.File, wires []Wire) error {
	if len(wires) == 0 {
		return nil
	}
	h, err := handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return detach(h, wires)
}

func detach(h *netlink.Handle, wires []Wire) error {
	var errs []error
	for _, w := range wires {
		for _, name := range []string{w.Iface, w.Tap} {
			l, err := h.LinkByName(name)
			if err != nil {
				continue
			}
			q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: ingressHandle}}
			if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("remove ingress qdisc of %s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}
