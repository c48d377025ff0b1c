// Package protocol holds the wire contract between the host (VMM relay,
// msb-runtime, shim) and the guest agent. It is the only package besides
// mounts/bootenv that the guest agent shares with the host.
//
// One guest channel (a virtio-serial port for QEMU, AF_VSOCK for libkrun)
// carries a yamux session. The host opens one yamux stream per relay client;
// the first line a client writes names what the stream is:
//
//	"ttrpc\n"          the stream is a ttrpc connection: containerd's task
//	                   API v3 plus the small Agent service below
//	"stdio <token>\n"  the stream is one raw byte stream of a process's stdio;
//	                   a task request names it as StreamURI(token)
//	"port <id>/<n>\n"  the agent connects to TCP port n on the loopback of
//	                   container id's network namespace and answers "ok\n"
//	                   (then the stream is that connection's bytes) or
//	                   "error <why>\n" (then it closes): containerd's CRI
//	                   port-forward, which dials localhost in the pod's
//	                   network namespace on the host (docs/networking.md)
//
// Stdio streams are half-closed to signal EOF (yamux FIN); output streams
// are fully written and closed before the agent reports the exit.
package protocol

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	// PortName is the virtio-serial port name the agent looks for under
	// /sys/class/virtio-ports/*/name.
	PortName = "msb.agent"
	// VsockPort is the AF_VSOCK port the guest connects to (host CID 2) on
	// backends with vsock (libkrun).
	VsockPort = 1024

	// KindTTRPC, KindStdio and KindPort are the stream header kinds.
	KindTTRPC = "ttrpc"
	KindStdio = "stdio"
	KindPort  = "port"

	// maxHeader bounds the header line so a broken client cannot make the
	// agent buffer without limit.
	maxHeader = 256

	streamScheme = "msb-stream:"

	// GuestSpecTypeURL is the type URL of the task Create request's Options:
	// the guest-side OCI spec as JSON (host paths already rewritten).
	GuestSpecTypeURL = "msb.dev/guest-spec+json"
	// ProcessSpecTypeURL is the type URL of an Exec request's spec: an OCI
	// specs.Process as JSON, as containerd's runc shim expects it.
	ProcessSpecTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
)

// MuxConfig is the yamux configuration both ends use. The write timeout is
// long because a guest under TCG emulation can stall for seconds.
func MuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.LogOutput = io.Discard
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 2 * time.Minute
	c.StreamOpenTimeout = 2 * time.Minute
	c.MaxStreamWindowSize = 1 << 20
	return c
}

// WriteHeader writes the stream header line.
func WriteHeader(w io.Writer, kind, arg string) error {
	line := kind
	if arg != "" {
		line += " " + arg
	}
	if strings.ContainsAny(line, "\n") || len(line)+1 > maxHeader {
		return fmt.Errorf("invalid stream header %q", line)
	}
	_, err := io.WriteString(w, line+"\n")
	return err
}

// ReadHeader reads the header line one byte at a time, so nothing of the
// stream's payload is consumed.
func ReadHeader(r io.Reader) (kind, arg string, err error) {
	var b [1]byte
	var sb strings.Builder
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", "", fmt.Errorf("read stream header: %w", err)
		}
		if b[0] == '\n' {
			break
		}
		if sb.Len() >= maxHeader {
			return "", "", errors.New("stream header too long")
		}
		sb.WriteByte(b[0])
	}
	kind, arg, _ = strings.Cut(sb.String(), " ")
	return kind, arg, nil
}

// StreamURI is how a task request names a stdio stream.
func StreamURI(token string) string { return streamScheme + token }

// ParseStreamURI returns the token of a StreamURI; ok is false for "" or any
// other form.
func ParseStreamURI(s string) (token string, ok bool) {
	token, ok = strings.CutPrefix(s, streamScheme)
	return token, ok && token != ""
}
