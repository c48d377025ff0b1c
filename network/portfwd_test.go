package network

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A connection to 127.0.0.1:PORT inside the namespace (what containerd's
// CRI port-forward makes) reaches the dialer with PORT; a port the guest
// refuses is refused; Close removes the rule and the listener.
func TestForwardLoopback(t *testing.T) {
	if _, err := exec.LookPath(iptables); err != nil {
		t.Skip("no iptables")
	}
	inNewNS(t, func(path string) {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("lo up: %v: %s", err, out)
		}
		// The "guest": answers one line on port 7, refuses the rest.
		dial := func(port int) (io.ReadWriteCloser, error) {
			if port != 7 {
				return nil, fmt.Errorf("connection refused")
			}
			a, b := net.Pipe()
			go func() {
				defer b.Close()
				line, _ := bufio.NewReader(b).ReadString('\n')
				fmt.Fprintf(b, "guest port %d: %s", port, line)
			}()
			return a, nil
		}
		f, err := ForwardLoopback(path, dial)
		if err != nil {
			t.Fatal(err)
		}
		rules := func() string {
			out, _ := exec.Command(iptables, "-w", "5", "-t", "nat", "-S", "OUTPUT").CombinedOutput()
			return string(out)
		}
		if !strings.Contains(rules(), "msb: loopback to the guest") {
			t.Fatalf("no redirect rule: %s", rules())
		}
		c, err := net.DialTimeout("tcp4", "localhost:7", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, "hello\n")
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "guest port 7: hello\n" {
			t.Fatalf("through the forwarder: %q", got)
		}
		c, err = net.DialTimeout("tcp4", "127.0.0.1:8", 5*time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("a port the guest refuses: %v, want connection reset", err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(rules(), "msb") {
			t.Fatalf("rule left after Close: %s", rules())
		}
		if c, err := net.DialTimeout("tcp4", "127.0.0.1:7", time.Second); err == nil {
			c.Close()
			t.Fatal("port 7 still answers after Close")
		}
	})
}
