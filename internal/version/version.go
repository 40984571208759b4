// Package version carries the build's version, stamped by the Makefile with
// -ldflags "-X github.com/sluice-dev/sluice/internal/version.Version=...".
package version

// Version is the sluice version ("dev" for unstamped builds).
var Version = "dev"
