package fetch

import (
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// versionAttr holds a copied file's origin version.
const versionAttr = "user.sluice.version"

// setVersion records v on the file at p, where the file system allows
// (a failure only means a rerun compares mtimes instead).
func setVersion(p, v string) {
	if v == "" {
		return
	}
	if err := unix.Setxattr(p, versionAttr, []byte(v), 0); err != nil {
		klog.V(2).InfoS("Cannot record the version in an extended attribute; a rerun compares size and mtime", "path", p, "err", err)
	}
}

// version returns the version recorded on the file at p.
func version(p string) (string, bool) {
	buf := make([]byte, 256)
	n, err := unix.Getxattr(p, versionAttr, buf)
	if err != nil || n > len(buf) {
		return "", false
	}
	return string(buf[:n]), true
}
