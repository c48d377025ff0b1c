// Package version carries the build's version, set with
// -ldflags "-X github.com/msb-dev/msb/version.Version=...".
package version

// Version of msb.
var Version = "0.1.0-dev"
