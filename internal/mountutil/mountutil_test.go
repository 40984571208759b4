package mountutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPrepareTarget(t *testing.T) {
	tmp := t.TempDir()
	tests := []struct {
		name  string
		dir   func(t *testing.T) string
		want  string // error fragment; "" = ready
		check func(t *testing.T, dir string)
	}{
		{"relative path", func(*testing.T) string { return "rel/dir" }, "not an absolute path", nil},
		{"missing dir is created", func(*testing.T) string { return filepath.Join(tmp, "a", "b") }, "", func(t *testing.T, dir string) {
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				t.Fatalf("%s not created: %v", dir, err)
			}
		}},
		{"existing empty dir", func(*testing.T) string { return tmp }, "", nil},
		{"live mount is refused", func(t *testing.T) string {
			if os.Geteuid() != 0 {
				t.Skip("mounting a tmpfs needs root")
			}
			d := filepath.Join(tmp, "live")
			os.MkdirAll(d, 0o755)
			if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=1m"); err != nil {
				t.Fatalf("mount tmpfs: %v", err)
			}
			t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
			return d
		}, "already a mount point", func(t *testing.T, dir string) {
			if !IsMountPoint(dir) {
				t.Fatal("the live mount was removed")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			err := PrepareTarget(dir)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("PrepareTarget(%q) = %v, want %q", dir, err, tc.want)
			}
			if tc.check != nil {
				tc.check(t, dir)
			}
		})
	}
}

func TestUnmountOfAPlainDirIsNoError(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("umount(2) needs root; as a user Unmount goes through fusermount3")
	}
	if err := Unmount(t.TempDir()); err != nil {
		t.Fatalf("Unmount of a directory that is no mount point: %v", err)
	}
}
