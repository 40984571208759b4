package fusefs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
)

// TestNegativeLookupsAreCached: a name the dataset does not have is
// answered by the kernel for the metadata TTL without asking the mount
// again, and shows once the TTL has passed.
func TestNegativeLookupsAreCached(t *testing.T) {
	const ttl = 2 * time.Second
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "here.txt"), []byte("here"), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := source.Parse("file://"+root, source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := mountSource(t, src, mountConfig{ttl: ttl})
	late := filepath.Join(m.dir, "late.txt")
	if _, err := os.Lstat(late); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat of a missing name: %v, want ENOENT", err)
	}
	looked := time.Now()
	if err := os.WriteFile(filepath.Join(root, "late.txt"), []byte("late"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The mount's own listing is forgotten: only the kernel's negative
	// entry can still answer ENOENT.
	m.fsys.ns.Refresh()
	if _, err := os.Lstat(late); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second stat within the TTL: %v, want the cached ENOENT", err)
	}
	deadline := time.Now().Add(10 * ttl)
	for {
		_, err := os.Lstat(late)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("late.txt still missing %s after the lookup (TTL %s): %v", time.Since(looked), ttl, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if waited := time.Since(looked); waited < ttl/2 {
		t.Fatalf("late.txt showed after %s, before the negative entry's TTL (%s) could pass", waited, ttl)
	}
}
