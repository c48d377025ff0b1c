package vmm

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// KindMemory is the relay stream kind the VMM answers itself, never
// passed to the guest: a creator's request to set the VM's memory (the
// balloon's target and the host cgroup's limit, ADR 031). Only a client
// of the relay socket on the host can send it; the guest opens no
// streams to the host.
const KindMemory = "msb-memory"

// MemoryRequest is the one line a creator sends on a KindMemory stream.
type MemoryRequest struct {
	// TargetMiB is the VM's new memory; 0 only asks for the state.
	TargetMiB int `json:"targetMiB,omitempty"`
}

// MemoryState is the VM's memory as the VMM sees it.
type MemoryState struct {
	// TargetMiB is what the VM is meant to have (the balloon's target);
	// ActualMiB is what the guest has given the balloon so far (qemu's
	// query-balloon); MaxMiB is what it booted with, the most a resize
	// can grow it to. HostLimitMiB is the VM's host cgroup memory limit
	// (0: none).
	TargetMiB    int `json:"targetMiB"`
	ActualMiB    int `json:"actualMiB"`
	MaxMiB       int `json:"maxMiB"`
	HostLimitMiB int `json:"hostLimitMiB,omitempty"`
}

type memoryReply struct {
	MemoryState
	Error string `json:"error,omitempty"`
}

// memoryTimeout bounds one exchange: a resize down waits for the guest
// to fill the balloon (vmmproc's balloonWait) before it answers.
const memoryTimeout = time.Minute

// SetMemory asks the VMM behind the relay socket to give its VM
// targetMiB of memory (0: only report), and returns the VM's memory
// after it.
func SetMemory(ctx context.Context, socket string, targetMiB int) (MemoryState, error) {
	ctx, cancel := context.WithTimeout(ctx, memoryTimeout)
	defer cancel()
	c, err := DialAgent(ctx, socket, KindMemory, "")
	if err != nil {
		return MemoryState{}, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	b, _ := json.Marshal(MemoryRequest{TargetMiB: targetMiB})
	if _, err := c.Write(append(b, '\n')); err != nil {
		return MemoryState{}, fmt.Errorf("VM memory request: %w", err)
	}
	line, err := readLine(c)
	if err != nil {
		return MemoryState{}, fmt.Errorf("VM memory request: no answer from the VMM (one older than ADR 031?): %w", err)
	}
	var rep memoryReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return MemoryState{}, fmt.Errorf("VM memory request: bad answer %.100q: %w", line, err)
	}
	if rep.Error != "" {
		return rep.MemoryState, fmt.Errorf("VM memory: %s", rep.Error)
	}
	return rep.MemoryState, nil
}

// ServeMemory is the VMM's side of a KindMemory stream whose header was
// read: it reads the request, applies it with apply and answers with the
// state apply returns and its error.
func ServeMemory(conn net.Conn, apply func(MemoryRequest) (MemoryState, error)) error {
	_ = conn.SetDeadline(time.Now().Add(memoryTimeout))
	line, err := readLine(conn)
	if err != nil {
		return fmt.Errorf("memory request: %w", err)
	}
	var req MemoryRequest
	var rep memoryReply
	if err = json.Unmarshal(line, &req); err == nil {
		rep.MemoryState, err = apply(req)
	}
	return answer(conn, &rep, &rep.Error, err)
}

// answer writes rep as one line, with err's text in *errText; it
// returns err, or the write's error.
func answer(conn net.Conn, rep any, errText *string, err error) error {
	if err != nil {
		*errText = err.Error()
	}
	b, _ := json.Marshal(rep)
	if _, werr := conn.Write(append(b, '\n')); werr != nil && err == nil {
		err = werr
	}
	return err
}
