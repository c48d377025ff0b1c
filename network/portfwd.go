package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Loopback forwarding: containerd's CRI serves `kubectl port-forward` by
// dialing localhost:PORT inside the pod's network namespace on the host,
// where a runc pod's processes listen. A VM's processes listen in the
// guest, so that namespace's loopback is empty. LoopbackForwarder closes
// the gap: one iptables rule in the namespace redirects every TCP
// connection to 127.0.0.1 to a listener of msb's there, which learns the
// port asked for (SO_ORIGINAL_DST) and connects it, through the guest
// agent, to the same port on the guest's loopback (docs/networking.md).

// LoopbackDialer connects to port on the guest's loopback; an error
// means the guest refused (nothing listens there).
type LoopbackDialer func(port int) (io.ReadWriteCloser, error)

// LoopbackForwarder is the listener and its redirect rule.
type LoopbackForwarder struct {
	nsPath string
	bin    string // iptables, as found at start
	ln     *net.TCPListener
	rule   []string
	dial   LoopbackDialer
	mu     sync.Mutex
	conns  map[io.Closer]bool
	wg     sync.WaitGroup
}

// iptables is the binary the rule is set with; a variable for tests.
var iptables = "iptables"

// ForwardLoopback starts forwarding TCP connections to 127.0.0.1 inside
// the network namespace at nsPath to dial.
func ForwardLoopback(nsPath string, dial LoopbackDialer) (_ *LoopbackForwarder, retErr error) {
	bin, err := exec.LookPath(iptables)
	if err != nil {
		return nil, fmt.Errorf("loopback forwarding needs iptables: %w (apt-get install iptables)", err)
	}
	f := &LoopbackForwarder{nsPath: nsPath, bin: bin, dial: dial, conns: map[io.Closer]bool{}}
	err = InNS(nsPath, func() error {
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		f.ln = ln
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		f.rule = []string{"-t", "nat", "OUTPUT", "-d", "127.0.0.1/32", "-p", "tcp",
			"-m", "comment", "--comment", "msb: loopback to the guest",
			"-j", "REDIRECT", "--to-ports", port}
		return iptablesRun(bin, "-A", f.rule)
	})
	if err != nil {
		if f.ln != nil {
			f.ln.Close()
		}
		return nil, fmt.Errorf("loopback forwarding in %s: %w", nsPath, err)
	}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// iptablesRun runs `iptables -w <op> <chain> <rule...>` where rule is
// ["-t", table, chain, match...].
func iptablesRun(bin, op string, rule []string) error {
	args := append([]string{"-w", "5", rule[0], rule[1], op}, rule[2:]...)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (f *LoopbackForwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.L.WithError(err).Warn("loopback forwarding: accept")
			}
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.forward(c)
		}()
	}
}

func (f *LoopbackForwarder) forward(c *net.TCPConn) {
	defer c.Close()
	port, err := originalPort(c)
	if err != nil {
		log.L.WithError(err).Warn("loopback forwarding: original destination")
		return
	}
	g, err := f.dial(port)
	if err != nil {
		// As a runc pod's loopback would: the connection is refused.
		log.L.WithError(err).Debugf("loopback forwarding: port %d", port)
		_ = c.SetLinger(0)
		return
	}
	if !f.track(g, true) {
		g.Close()
		return
	}
	defer f.track(g, false)
	defer g.Close()
	f.track(c, true)
	defer f.track(c, false)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(g, c)
		halfClose(g)
		close(done)
	}()
	_, _ = io.Copy(c, g)
	_ = c.CloseWrite()
	<-done
}

// track adds (or removes) a connection Close must end; false once closed.
func (f *LoopbackForwarder) track(c io.Closer, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	if add {
		f.conns[c] = true
	} else {
		delete(f.conns, c)
	}
	return true
}

func halfClose(c io.Closer) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// originalPort is the port a redirected connection was made to.
func originalPort(c *net.TCPConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var port int
	var serr error
	err = raw.Control(func(fd uintptr) {
		// struct sockaddr_in, as the IPv6 mreq's 20 bytes hold it.
		var mreq *unix.IPv6Mreq
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.IPPROTO_IP, unix.SO_ORIGINAL_DST)
		if serr == nil {
			port = int(binary.BigEndian.Uint16(mreq.Multiaddr[2:4]))
		}
	})
	if err == nil {
		err = serr
	}
	return port, err
}

// Close removes the rule, stops listening and ends the connections;
// safe on nil.
func (f *LoopbackForwarder) Close() error {
	if f == nil {
		return nil
	}
	err := InNS(f.nsPath, func() error { return iptablesRun(f.bin, "-D", f.rule) })
	if errors.Is(err, os.ErrNotExist) {
		err = nil // the namespace is gone, and its rule with it
	}
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
	return err
}
