package protocol

import (
	"errors"
	"net"
	"strings"
	"testing"
)

func TestPortArg(t *testing.T) {
	id, port, err := ParsePortArg(PortArg("sandbox-1", 8080))
	if err != nil || id != "sandbox-1" || port != 8080 {
		t.Fatalf("round trip: %q %d %v", id, port, err)
	}
	for _, bad := range []string{"", "x", "/80", "x/0", "x/65536", "x/eighty", "x/-1"} {
		if _, _, err := ParsePortArg(bad); err == nil || !strings.Contains(err.Error(), "<container id>/<port 1-65535>") {
			t.Errorf("ParsePortArg(%q) = %v", bad, err)
		}
	}
}

// OpenPort and AnswerPort speak the same lines: ok, then payload; error
// with its reason, on one line however long.
func TestOpenPort(t *testing.T) {
	for _, answer := range []error{nil, errors.New("dial tcp4 127.0.0.1:81: connect: connection refused\n" + strings.Repeat("x", 400))} {
		host, guest := net.Pipe()
		go func() {
			kind, arg, err := ReadHeader(guest)
			if err != nil || kind != KindPort || arg != "c1/81" {
				t.Errorf("header %q %q %v", kind, arg, err)
			}
			_ = AnswerPort(guest, answer)
			if answer == nil {
				_, _ = guest.Write([]byte("payload"))
			}
			guest.Close()
		}()
		err := OpenPort(host, "c1", 81)
		if answer == nil {
			b := make([]byte, 7)
			if _, rerr := host.Read(b); err != nil || rerr != nil || string(b) != "payload" {
				t.Fatalf("ok answer: %v, %v, %q", err, rerr, b)
			}
		} else if err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("error answer: %v", err)
		}
		host.Close()
	}
}
