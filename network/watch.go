package network

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Changes is a subscription to the link, address and route changes of a
// network namespace (rtnetlink multicast groups).
type Changes struct {
	s *nl.NetlinkSocket
	// C receives a value after changes (coalesced: one value may stand
	// for many); it is closed when the subscription ends.
	C    <-chan struct{}
	done chan struct{}
	once sync.Once
}

// Subscribe subscribes to the changes of the namespace ns (nil: the
// caller's) until Close. A lost message (the socket's buffer overran)
// counts as a change: the subscriber looks at the namespace afresh.
func Subscribe(ns *os.File) (*Changes, error) {
	target := netns.None()
	if ns != nil {
		target = netns.NsHandle(ns.Fd())
	}
	s, err := nl.SubscribeAt(target, netns.None(), unix.NETLINK_ROUTE,
		unix.RTNLGRP_LINK, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("subscribe to network changes: %w", err)
	}
	c := make(chan struct{}, 1)
	ch := &Changes{s: s, C: c, done: make(chan struct{})}
	go func() {
		defer close(c)
		for {
			_, _, err := s.Receive()
			select {
			case <-ch.done:
				return
			default:
			}
			if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				return
			}
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}()
	return ch, nil
}

// Close ends the subscription; C is closed soon after. Safe on nil.
func (c *Changes) Close() {
	if c == nil {
		return
	}
	c.once.Do(func() {
		close(c.done)
		c.s.Close()
	})
}
