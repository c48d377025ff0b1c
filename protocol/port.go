package protocol

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// PortArg is the header argument of a "port" stream: container id's
// loopback port n.
func PortArg(id string, port int) string { return id + "/" + strconv.Itoa(port) }

// ParsePortArg reverses PortArg; the id is checked by the agent's lookup.
func ParsePortArg(arg string) (id string, port int, err error) {
	id, p, ok := strings.Cut(arg, "/")
	if ok {
		port, err = strconv.Atoi(p)
	}
	if !ok || id == "" || err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("port stream %q: want <container id>/<port 1-65535>", arg)
	}
	return id, port, nil
}

// Port stream answers.
const (
	portOK    = "ok"
	portError = "error"
)

// OpenPort asks the agent on stream rw (a new stream, nothing written yet)
// to connect it to container id's loopback port; on nil the stream
// carries that connection's bytes.
func OpenPort(rw io.ReadWriter, id string, port int) error {
	if err := WriteHeader(rw, KindPort, PortArg(id, port)); err != nil {
		return err
	}
	kind, why, err := ReadHeader(rw)
	switch {
	case err != nil:
		return fmt.Errorf("port %d of %s: %w", port, id, err)
	case kind == portOK:
		return nil
	case kind == portError:
		return fmt.Errorf("port %d of %s: %s", port, id, why)
	}
	return fmt.Errorf("port %d of %s: unexpected answer %q", port, id, kind)
}

// AnswerPort is the agent's answer to a port stream: "ok" for a nil err.
func AnswerPort(w io.Writer, err error) error {
	if err == nil {
		return WriteHeader(w, portOK, "")
	}
	why := strings.ReplaceAll(err.Error(), "\n", " ")
	if len(why) > maxHeader-len(portError)-2 {
		why = why[:maxHeader-len(portError)-2]
	}
	return WriteHeader(w, portError, why)
}
