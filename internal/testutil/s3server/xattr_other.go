//go:build !linux

package s3server

// xattrSupported is conservative off Linux: metadata goes to a sidecar
// directory.
func xattrSupported(string) bool { return false }
