// Package agent is the msb guest agent: the program that runs as /init in
// every msb microVM.
//
// In the guest, PID 1 is a small supervisor (RunInit): it mounts the pseudo
// filesystems, loads kernel modules (package agent/modprobe), and starts the
// agent proper as its child (RunGuest), which opens the agent channel
// (virtio-serial port or vsock), runs a yamux server on it and serves, over
// ttrpc, containerd's task API v3 (package agent/task, backed by runc or
// crun in the guest) plus the small msb Agent service (boot config, status,
// clock, power-off). Stdio of container processes travels as raw yamux
// streams named by tokens (see package protocol). The split into supervisor
// and agent lets PID 1 be handed to a user init without disturbing the agent
// (docs/adr/003-agent-handoff-init.md).
//
// This package wires the others: agent/task and agent/modprobe import
// nothing of it.
//
// Outside a VM (tests, development) the agent is an ordinary process: Serve
// runs it over any net.Conn with configurable runc paths, without early init.
package agent
