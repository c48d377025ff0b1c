// Package modprobe loads the guest's kernel modules: the boot-time list
// (LoadModules, run by PID 1 before the agent starts) and, as the kernel's
// request_module helper (/sbin/modprobe links to the agent binary), any
// module on demand from the image's module tree (Main). It is a leaf: the
// agent's PID 1 and the msb-agent command call it; it knows nothing of them.
package modprobe
