// Package taskio is a task's host-side stdio as containerd names it: fifo
// paths, file:// logs and binary:// loggers, bridged to the process's
// stdio streams through the VM's agent relay (one stream each, copied with
// backpressure). The shim opens one IO per process and waits on it before
// it reports the process's exit; the package knows nothing of the shim's
// containers or pods.
package taskio
