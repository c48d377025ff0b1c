package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/msb-dev/msb/protocol"
)

// Synced is the wiring of a namespace after Sync.
type Synced struct {
	// Wires are the interfaces joined to taps now: those of the record
	// still there (under their current name), then the Added new ones.
	Wires []Wire
	Added int
	// Configs are what the guest agent sets on each wire's NIC, in the
	// order of Wires.
	Configs []protocol.NetInterface
	// Removed are the NICs whose interface left the namespace, unwired
	// here: the guest agent gives them back (BootMAC, the name it had).
	Removed []protocol.NetInterface
}

// Sync brings the wiring of the namespace ns to its interfaces now:
// wired interfaces that left are unwired (their NIC is free again), new
// Ethernet interfaces are wired to a free NIC (upOnly: only those set up,
// as a network manager sets an interface up once it has configured it),
// and every wire's guest configuration is read afresh. The result is the
// wiring as it is, also with an error: one interface that cannot be wired
// (no free NIC, a netlink failure) leaves the others wired.
func Sync(ns *os.File, nics []NIC, wired []Wire, upOnly bool) (Synced, error) {
	h, err := handle(ns)
	if err != nil {
		return Synced{Wires: wired}, err
	}
	defer h.Close()
	return syncWires(h, nics, wired, upOnly)
}

func syncWires(h *netlink.Handle, nics []NIC, wired []Wire, upOnly bool) (Synced, error) {
	s := Synced{Wires: wired}
	links, err := h.LinkList()
	if err != nil {
		return s, fmt.Errorf("list interfaces: %w", err)
	}
	byIndex := map[int]netlink.Link{}
	claimed := map[string]bool{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
		if eligible(l) {
			claimed[l.Attrs().HardwareAddr.String()] = true
		}
	}
	nicOf := map[string]NIC{}
	for _, n := range nics {
		nicOf[n.Tap] = n
	}
	s.Wires = nil
	used := map[string]bool{}
	done := map[int]bool{}
	var errs []error
	for _, w := range wired {
		l := wiredLink(w, byIndex, links)
		nic := nicOf[w.Tap]
		if l == nil {
			// The interface left (its redirect went with it): free the tap.
			if err := detach(h, []Wire{{Tap: w.Tap}}); err != nil {
				errs = append(errs, err)
			}
			s.Removed = append(s.Removed, protocol.NetInterface{BootMAC: nic.MAC, Name: w.Iface})
			continue
		}
		a := l.Attrs()
		w.Iface, w.Index = a.Name, a.Index
		used[w.Tap], done[a.Index] = true, true
		ni, err := guestConfig(h, l, nic)
		if err != nil {
			errs = append(errs, err)
		}
		s.Wires, s.Configs = append(s.Wires, w), append(s.Configs, ni)
	}
	var left []string
	for _, l := range links {
		a := l.Attrs()
		if !eligible(l) || done[a.Index] || (upOnly && a.Flags&net.FlagUp == 0) {
			continue
		}
		nic, ok := pick(nics, used, a.HardwareAddr.String(), claimed)
		if !ok {
			left = append(left, a.Name)
			continue
		}
		ni, err := wire(h, l, nic)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		used[nic.Tap] = true
		s.Wires, s.Configs = append(s.Wires, Wire{Iface: a.Name, Tap: nic.Tap, Index: a.Index}), append(s.Configs, ni)
		s.Added++
	}
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("interface %s appeared after the VM booted and no spare NIC is left for it (the VM has %d NICs): raise spare_nics in the msb config (a VM cannot hot-plug NICs)",
			strings.Join(left, ", "), len(nics)))
	}
	return s, errors.Join(errs...)
}

// wiredLink returns the interface of w, by index (by name in a record
// that has none), or nil when it left.
func wiredLink(w Wire, byIndex map[int]netlink.Link, links []netlink.Link) netlink.Link {
	if w.Index != 0 {
		return byIndex[w.Index]
	}
	for _, l := range links {
		if l.Attrs().Name == w.Iface {
			return l
		}
	}
	return nil
}

// wire redirects l to nic's tap and back, and reads its guest
// configuration; on failure it undoes the redirect.
func wire(h *netlink.Handle, l netlink.Link, nic NIC) (protocol.NetInterface, error) {
	a := l.Attrs()
	tap, err := h.LinkByName(nic.Tap)
	if err != nil {
		return protocol.NetInterface{}, fmt.Errorf("tap %s of interface %s: %w", nic.Tap, a.Name, err)
	}
	w := []Wire{{Iface: a.Name, Tap: nic.Tap}}
	if err := redirect(h, l, tap); err != nil {
		detach(h, w)
		return protocol.NetInterface{}, fmt.Errorf("wire %s to %s: %w", a.Name, nic.Tap, err)
	}
	ni, err := guestConfig(h, l, nic)
	if err != nil {
		detach(h, w)
		return ni, err
	}
	return ni, nil
}
