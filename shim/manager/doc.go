// Package manager is the shim's manager (containerd's shim.Manager), what
// containerd runs as `containerd-shim-msb-v2 start|delete|-info`: start
// starts or joins the shim of the container's group (moving it into the
// ShimCgroup its runc options name), delete cleans up after a dead shim
// from the record it left in the bundle.
//
// The bundle record (Record) and the VMM binary (VMMBinary) live here
// because both sides need them: the long-running task service (package
// shim) writes the record and spawns msb-runtime, the manager reads the
// record and asks msb-runtime for its features. Imports flow shim →
// shim/manager, never back. See docs/adr/005-shim-design.md.
package manager
