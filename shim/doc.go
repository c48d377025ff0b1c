// Package shim is containerd's shim v2 for msb (runtime type
// io.containerd.msb.v2): the task service (task API v3) the long-running
// shim serves over ttrpc. The manager that containerd runs as
// `containerd-shim-msb-v2 start|delete`, and the bundle record the two
// share, are package shim/manager.
//
// Every container runs in its own microVM. The shim mounts the container's
// rootfs on the host, turns the bundle into a VM launch (mounts, specconv),
// spawns the VMM process attached to itself through the parent watchdog
// (vmm.Spawn), and forwards task RPCs to the guest agent, which serves the
// same task API backed by runc inside the guest. The shim keeps what only
// the host can do: VM lifecycle, host stdio (shim/taskio), events in
// runc-shim order, and cleanup after a crash.
//
// See docs/adr/005-shim-design.md for the decisions behind it.
package shim
