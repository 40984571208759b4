// Package mountutil holds the mount-point helpers every sluice component
// shares: preparing a target (replacing a stale FUSE mount left by a crash,
// never stacking on it), unmounting, and tuning a FUSE mount's readahead.
package mountutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
)

// PrepareTarget makes dir ready to be mounted on: it must be an absolute
// path; it is created if missing; a stale mount (ENOTCONN, a FUSE server
// that died) is detached; a live mount is an error.
func PrepareTarget(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("mount point %q is not an absolute path", dir)
	}
	m := mount.NewWithoutSystemd("")
	notMnt, err := m.IsLikelyNotMountPoint(dir)
	switch {
	case err == nil && notMnt:
		return nil
	case err == nil && !isStale(dir):
		return fmt.Errorf("%s is already a mount point; unmount it first", dir)
	case os.IsNotExist(err):
		return os.MkdirAll(dir, 0o755)
	case err == nil || mount.IsCorruptedMnt(err):
		klog.InfoS("Replacing a stale mount", "path", dir, "err", err)
		if err := Unmount(dir); err != nil {
			return fmt.Errorf("detaching stale mount at %s: %w", dir, err)
		}
		if notMnt, err := m.IsLikelyNotMountPoint(dir); err != nil || !notMnt {
			return fmt.Errorf("%s is still mounted after detaching a stale mount (err=%v)", dir, err)
		}
		return nil
	default:
		return fmt.Errorf("checking mount point %s: %w", dir, err)
	}
}

// isStale reports whether the mount at dir has lost its server. A stat can
// still succeed from the kernel's attribute cache; statfs always asks the
// file system, so a dead FUSE connection answers ENOTCONN.
func isStale(dir string) bool {
	var st unix.Statfs_t
	err := unix.Statfs(dir, &st)
	return err != nil && mount.IsCorruptedMnt(err)
}

// Unmount detaches the mount at dir (lazily, so a busy or dead FUSE mount
// goes too). As non-root it falls back to fusermount3 -uz.
func Unmount(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) {
		return nil // EINVAL: not a mount point (any more)
	}
	if errors.Is(err, unix.EPERM) {
		if out, ferr := exec.Command("fusermount3", "-uz", dir).CombinedOutput(); ferr != nil {
			return fmt.Errorf("fusermount3 -uz %s: %w: %s", dir, ferr, out)
		}
		return nil
	}
	return err
}

// IsMountPoint reports whether dir is a mount point (a stale one included).
func IsMountPoint(dir string) bool {
	notMnt, err := mount.NewWithoutSystemd("").IsLikelyNotMountPoint(dir)
	if err != nil {
		return mount.IsCorruptedMnt(err)
	}
	return !notMnt
}

// SetReadAheadKB sets read_ahead_kb on the backing device (bdi) of the
// mount at dir. FUSE mounts get the kernel default (128 KiB); larger values
// let sequential readers keep more requests in flight.
func SetReadAheadKB(dir string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(fmt.Sprintf("%d\n", kb)), 0o644)
}
