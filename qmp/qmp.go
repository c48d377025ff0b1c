// Package qmp is a small client of QEMU's machine protocol (QMP): the
// VMM's one channel to its qemu for what a command line cannot say once
// the VM runs (the balloon's target, saving a VM's state).
//
// qemu is treated as hostile (a guest may have escaped into it): every
// read is bounded in size and by the caller's deadline.
package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxLine bounds one message from qemu; the replies msb asks for are a
// few hundred bytes.
const maxLine = 1 << 20

// DefaultTimeout bounds a command whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// Client sends one command at a time over a connected QMP socket.
type Client struct {
	mu   sync.Mutex
	conn *net.UnixConn
	r    *bufio.Reader
	// events are those read while waiting for a command's return, kept
	// (the last maxEvents) for WaitEvent.
	events []Event
}

// Event is an asynchronous message from qemu.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// maxEvents bounds the events kept for WaitEvent.
const maxEvents = 64

// Error is qemu's answer to a command it refused.
type Error struct {
	Command, Class, Desc string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// New reads qemu's greeting on conn and leaves negotiation mode; the
// Client owns conn from then on.
func New(ctx context.Context, conn *net.UnixConn) (*Client, error) {
	c := &Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	if err := c.deadline(ctx); err != nil {
		return nil, err
	}
	line, err := c.readLine()
	if err != nil {
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	var greet struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		return nil, fmt.Errorf("qmp greeting: not a QMP greeting: %.100q", line)
	}
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		return nil, err
	}
	return c, nil
}

// Execute runs command with args (nil for none) and decodes its return
// value into out (nil to discard it). Events qemu sends meanwhile are
// skipped.
func (c *Client) Execute(ctx context.Context, command string, args, out any) error {
	return c.execute(ctx, command, args, out, nil)
}

// ExecuteWithFile is Execute passing f to qemu with the command
// (SCM_RIGHTS), as getfd and add-fd expect.
func (c *Client) ExecuteWithFile(ctx context.Context, command string, args, out any, f *os.File) error {
	return c.execute(ctx, command, args, out, f)
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) execute(ctx context.Context, command string, args, out any, f *os.File) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.deadline(ctx); err != nil {
		return err
	}
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	if _, _, err := c.conn.WriteMsgUnix(append(b, '\n'), oob, nil); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	for {
		line, err := c.readLine()
		if err != nil {
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		var reply struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &reply); err != nil {
			return fmt.Errorf("qmp %s: bad reply %.100q: %w", command, line, err)
		}
		switch {
		case reply.Event != "":
			c.keep(line)
			continue
		case reply.Error != nil:
			return &Error{Command: command, Class: reply.Error.Class, Desc: reply.Error.Desc}
		case reply.Return == nil:
			return fmt.Errorf("qmp %s: reply with neither return nor error: %.100q", command, line)
		}
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(reply.Return, out); err != nil {
			return fmt.Errorf("qmp %s: decode return: %w", command, err)
		}
		return nil
	}
}

// keep records an event line for WaitEvent.
func (c *Client) keep(line []byte) {
	var ev Event
	if json.Unmarshal(line, &ev) != nil {
		return
	}
	if len(c.events) == maxEvents {
		c.events = c.events[1:]
	}
	c.events = append(c.events, ev)
}

// WaitEvent returns the first event named name for which match (nil: any)
// is true, kept from earlier reads or read now, until ctx ends.
func (c *Client) WaitEvent(ctx context.Context, name string, match func(Event) bool) (Event, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok := func(ev Event) bool { return ev.Name == name && (match == nil || match(ev)) }
	for i, ev := range c.events {
		if ok(ev) {
			c.events = append(c.events[:i:i], c.events[i+1:]...)
			return ev, nil
		}
	}
	if err := c.deadline(ctx); err != nil {
		return Event{}, err
	}
	for {
		line, err := c.readLine()
		if err != nil {
			return Event{}, fmt.Errorf("qmp: waiting for event %s: %w", name, err)
		}
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil || ev.Name == "" {
			continue // a stray return: no command is waiting for it
		}
		if ok(ev) {
			return ev, nil
		}
	}
}

// deadline applies ctx's deadline, or DefaultTimeout, to the connection.
func (c *Client) deadline(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(DefaultTimeout)
	}
	return c.conn.SetDeadline(d)
}

// readLine reads one newline-terminated message of at most maxLine bytes.
func (c *Client) readLine() ([]byte, error) {
	var buf []byte
	for {
		chunk, err := c.r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxLine {
			return nil, fmt.Errorf("message over %d bytes", maxLine)
		}
		if err == nil {
			return bytes.TrimSpace(buf), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}
