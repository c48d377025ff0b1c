package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// benchNet is the "with network" setup: a bench-made host namespace with
// a bridge (never the machine's own namespace), and per run a container
// namespace wired to it by a veth with an address, as CNI's bridge plugin
// leaves it. Its cost is the client's and the same for both runtimes;
// what differs is what each runtime does with the namespace.
type benchNet struct {
	host string
	seq  int
	made []string
}

func newBenchNet() (*benchNet, error) {
	b := &benchNet{}
	host, err := b.netns()
	if err != nil {
		return nil, err
	}
	b.host = host
	h, err := handleAt(host)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "benchbr0"}}
	if err := h.LinkAdd(br); err != nil {
		return nil, err
	}
	addr, _ := netlink.ParseAddr("10.77.0.1/16")
	if err := h.AddrAdd(br, addr); err != nil {
		return nil, err
	}
	return b, h.LinkSetUp(br)
}

// netns makes a named network namespace without switching this process's.
func (b *benchNet) netns() (string, error) {
	b.seq++
	name := fmt.Sprintf("msbbench-%d-%d", os.Getpid(), b.seq)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // unlocked only when back in the original namespace
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return "", err
	}
	b.made = append(b.made, name)
	return filepath.Join("/var/run/netns", name), nil
}

func handleAt(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
}

// container makes a namespace with eth0 on the bridge and returns it.
func (b *benchNet) container() (string, error) {
	path, err := b.netns()
	if err != nil {
		return "", err
	}
	h, err := handleAt(b.host)
	if err != nil {
		return "", err
	}
	defer h.Close()
	br, err := h.LinkByName("benchbr0")
	if err != nil {
		return "", err
	}
	ns, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	name := fmt.Sprintf("bv%d", b.seq)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns.Fd()))}
	if err := h.LinkAdd(veth); err != nil {
		return "", err
	}
	if err := h.LinkSetUp(veth); err != nil {
		return "", err
	}
	ch, err := handleAt(path)
	if err != nil {
		return "", err
	}
	defer ch.Close()
	eth, err := ch.LinkByName("eth0")
	if err != nil {
		return "", err
	}
	addr, _ := netlink.ParseAddr(fmt.Sprintf("10.77.%d.%d/16", b.seq/250, 2+b.seq%250))
	if err := ch.AddrAdd(eth, addr); err != nil {
		return "", err
	}
	if err := ch.LinkSetUp(eth); err != nil {
		return "", err
	}
	return path, ch.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("10.77.0.1")})
}

// cleanup deletes every namespace it made (their veths go with them).
func (b *benchNet) cleanup() {
	for _, n := range b.made {
		_ = netns.DeleteNamed(n)
	}
}
