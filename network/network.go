// Package network joins a VM to its container's network namespace on the
// host, the way Kata's "tcfilter" model does: the VMM process lives in that
// namespace, every Ethernet interface there gets a tap device beside it, tc
// ingress filters redirect (mirred) every frame from the interface to the
// tap and back, and the guest sees a virtio-net NIC with the interface's
// MAC, MTU, addresses and routes (docs/networking.md).
//
// Plan decides the NICs before the VM boots, CreateTaps (in the VMM
// process, inside the namespace) makes their taps, Sync wires the
// interfaces present when the container starts (and, after it, those
// that come and go: Subscribe tells when) and returns what the guest
// agent configures, Detach removes the wiring.
package network

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TapPrefix starts the name of every tap msb creates; a namespace that
// has one is wired to an msb VM already.
const TapPrefix = "msbtap"

// NIC is one virtio-net device of a VM and its tap on the host.
type NIC struct {
	// Tap is the tap device's name in the VM's network namespace.
	Tap string `json:"tap"`
	// MAC is the guest NIC's address at boot (how the agent finds it):
	// the interface's own for one present at boot, else a random local one.
	MAC string `json:"mac"`
	MTU int    `json:"mtu,omitempty"`
	// Spare NICs wait for an interface that appears after the VM booted
	// (Docker moves its veth in between create and start, a network
	// connected after start comes later still).
	Spare bool `json:"spare,omitempty"`
}

// Wire is one interface joined to a NIC's tap by Sync.
type Wire struct {
	Iface string `json:"iface"`
	Tap   string `json:"tap"`
	// Index is the interface's: a name can come back on another
	// interface (disconnect and connect again).
	Index int `json:"index,omitempty"`
}

// OpenNS opens a network namespace by path for Sync, Subscribe and Detach.
func OpenNS(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return f, nil
}

// handle returns a netlink handle whose sockets live in the namespace ns
// (nil: the caller's).
func handle(ns *os.File) (*netlink.Handle, error) {
	if ns == nil {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in network namespace %s: %w", ns.Name(), err)
	}
	return h, nil
}

// eligible reports whether l is an interface msb joins to the guest: an
// Ethernet device that is neither loopback nor one of msb's taps.
func eligible(l netlink.Link) bool {
	a := l.Attrs()
	return a.EncapType == "ether" && len(a.HardwareAddr) == 6 && !strings.HasPrefix(a.Name, TapPrefix) && a.Flags&net.FlagLoopback == 0
}

// Plan returns the NICs of a VM whose VMM runs in the namespace at nsPath
// ("" for a new, empty one): one per Ethernet interface there now, then
// spares spare NICs for interfaces that arrive later (Docker's veth after
// create, docker network connect after start). A namespace already wired
// to another msb VM is refused: two VMs cannot share one interface.
func Plan(nsPath string, spares int) ([]NIC, error) {
	var links []netlink.Link
	if nsPath != "" {
		ns, err := OpenNS(nsPath)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		if err := notHost(ns, nsPath); err != nil {
			return nil, err
		}
		h, err := handle(ns)
		if err != nil {
			return nil, err
		}
		defer h.Close()
		if links, err = h.LinkList(); err != nil {
			return nil, fmt.Errorf("list interfaces of network namespace %s: %w", nsPath, err)
		}
	}
	var nics []NIC
	for _, l := range links {
		a := l.Attrs()
		if strings.HasPrefix(a.Name, TapPrefix) {
			return nil, fmt.Errorf("network namespace %s is already wired to another msb VM (it has %s): a VM's network can be shared only by the containers of its pod; give this container its own network", nsPath, a.Name)
		}
		if eligible(l) {
			nics = append(nics, NIC{Tap: tapName(len(nics)), MAC: a.HardwareAddr.String(), MTU: a.MTU})
		}
	}
	for i := 0; i < spares; i++ {
		mac, err := randomMAC()
		if err != nil {
			return nil, err
		}
		nics = append(nics, NIC{Tap: tapName(len(nics)), MAC: mac, Spare: true})
	}
	return nics, nil
}

// hostNS are the namespaces taken for the host's: init's, and this
// process's as it started (read before any thread could switch).
var hostNS = func() []unix.Stat_t {
	var out []unix.Stat_t
	for _, p := range []string{"/proc/1/ns/net", "/proc/self/ns/net"} {
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil {
			out = append(out, st)
		}
	}
	return out
}()

// notHost refuses the host's network namespace: joining it would hand the
// host's interfaces to the guest.
func notHost(ns *os.File, path string) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	for _, hs := range hostNS {
		if hs.Dev == st.Dev && hs.Ino == st.Ino {
			return fmt.Errorf("network namespace %s is the host's: a VM cannot share the host's network; drop the path (or use the container's own network)", path)
		}
	}
	return nil
}

func tapName(i int) string { return fmt.Sprintf("%s%d", TapPrefix, i) }

// randomMAC returns a locally administered unicast MAC address.
func randomMAC() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[0] = (b[0] | 0x02) &^ 0x01
	return net.HardwareAddr(b).String(), nil
}

// CreateTaps creates the taps of nics in the caller's network namespace
// (the VMM process's) and returns their fds, in order, for the hypervisor.
// The taps are not persistent: they vanish with the last fd, so a killed
// VMM leaves none behind.
func CreateTaps(nics []NIC) (_ []*os.File, retErr error) {
	var fds []*os.File
	defer func() {
		if retErr != nil {
			for _, f := range fds {
				f.Close()
			}
		}
	}()
	for _, n := range nics {
		tap := &netlink.Tuntap{
			LinkAttrs:  netlink.LinkAttrs{Name: n.Tap, MTU: n.MTU},
			Mode:       netlink.TUNTAP_MODE_TAP,
			Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
			Queues:     1,
			NonPersist: true,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			if errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("tap %s exists: the network namespace is wired to another msb VM", n.Tap)
			}
			return nil, fmt.Errorf("create tap %s: %w", n.Tap, err)
		}
		fds = append(fds, tap.Fds...)
		if n.MTU > 0 {
			if err := netlink.LinkSetMTU(tap, n.MTU); err != nil {
				return nil, fmt.Errorf("tap %s: set MTU %d: %w", n.Tap, n.MTU, err)
			}
		}
		if err := netlink.LinkSetUp(tap); err != nil {
			return nil, fmt.Errorf("tap %s: set up: %w", n.Tap, err)
		}
	}
	return fds, nil
}

// MoveTaps moves the taps of nics from the network namespace from into
// to and sets them up there: a pool VM, booted in a namespace of its own, is claimed by a
// container whose namespace is given (ADR 020). A tap keeps its queues,
// and the hypervisor its fd, across the move.
func MoveTaps(from, to *os.File, nics []NIC) error {
	h, err := handle(from)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, n := range nics {
		l, err := h.LinkByName(n.Tap)
		if err != nil {
			return fmt.Errorf("tap %s: %w", n.Tap, err)
		}
		if err := h.LinkSetNsFd(l, int(to.Fd())); err != nil {
			return fmt.Errorf("move tap %s into network namespace %s: %w", n.Tap, to.Name(), err)
		}
	}
	// A link that changes namespace is down in the new one.
	th, err := handle(to)
	if err != nil {
		return err
	}
	defer th.Close()
	for _, n := range nics {
		l, err := th.LinkByName(n.Tap)
		if err == nil {
			err = th.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("tap %s in network namespace %s: set up: %w", n.Tap, to.Name(), err)
		}
	}
	return nil
}

// wiresFile is where a creator records its wires in the VM's state dir,
// so whoever cleans up after it (the VMM, `shim delete`) can unwire.
const wiresFile = "network.json"

// SaveWires records wires in the state dir dir.
func SaveWires(dir string, wires []Wire) error {
	b, err := json.Marshal(wires)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, wiresFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("record network wires: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, wiresFile))
}

// LoadWires reads what SaveWires recorded in dir; none when it did not.
func LoadWires(dir string) ([]Wire, error) {
	b, err := os.ReadFile(filepath.Join(dir, wiresFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var w []Wire
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, wiresFile), err)
	}
	return w, nil
}
