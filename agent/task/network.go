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

	"github.com/msb-dev/msb/agent/task/nic"
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
		if l := nic.Moved(th, boot); l != nil {
			err = nic.Update(th, l, n)
		} else {
			err = nic.Configure(th, target, n)
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
		l := nic.Moved(th, boot)
		if l == nil {
			continue
		}
		if err := nic.Release(th, self, l, boot); err != nil {
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
