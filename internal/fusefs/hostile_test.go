package fusefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/internal/source"
)

// hostileSource lists whatever names a malicious or broken bucket (or a
// cache worker answering for one) might return: names that climb out of
// their directory, absolute and empty names, NUL bytes, overlong names and
// a name that is both a file and a directory. It serves one file, "ok".
type hostileSource struct{ data []byte }

var hostileNames = []string{"../x", "a/../../b", "/abs", "a//b", ".", "..", "", "nul\x00name",
	strings.Repeat("n", 256), strings.Repeat("m", 1024), "both", "both"}

func (s hostileSource) ID() string { return "hostile://" }

func (s hostileSource) List(ctx context.Context, dir string) ([]source.Entry, error) {
	if dir != "" {
		return nil, source.ErrNotFound
	}
	out := []source.Entry{{Name: "ok", Size: int64(len(s.data)), Version: "v1"}, {Name: strings.Repeat("k", 255), Size: 1, Version: "v1"}}
	for i, n := range hostileNames {
		out = append(out, source.Entry{Name: n, Size: 3, Version: "v1", IsDir: n == "both" && i == len(hostileNames)-1})
	}
	return out, nil
}

func (s hostileSource) Stat(ctx context.Context, p string) (source.Entry, error) {
	if p == "" {
		return source.Entry{IsDir: true}, nil
	}
	return source.Entry{}, source.ErrNotFound
}

func (s hostileSource) ReadAt(ctx context.Context, p, v string, buf []byte, off int64) error {
	switch {
	case p == "ok":
		copy(buf, s.data[off:])
	case p == strings.Repeat("k", 255):
		copy(buf, "k")
	default:
		return errors.New("read of a name that should never have been shown: " + p)
	}
	return nil
}

// TestHostileNamesStayInTheMount: a real mount over such a listing shows
// only the names a directory can hold (the file wins over the directory of
// the same name), every hidden name is ENOENT or invalid for the kernel,
// and nothing appears outside the mount point.
func TestHostileNamesStayInTheMount(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "mnt")
	tm := mountSource(t, hostileSource{data: []byte("hello")}, mountConfig{dir: dir})
	ents, err := os.ReadDir(tm.dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
		if e.Name() == "both" && e.IsDir() {
			t.Error(`"both" is shown as a directory; the file should win`)
		}
	}
	want := []string{"both", strings.Repeat("k", 255), "ok"}
	if !slices.Equal(got, want) {
		t.Fatalf("readdir = %q, want %q", got, want)
	}
	if b, err := os.ReadFile(filepath.Join(tm.dir, "ok")); err != nil || !bytes.Equal(b, []byte("hello")) {
		t.Fatalf("read ok = %q, %v", b, err)
	}
	for _, n := range []string{"..x", "nul", strings.Repeat("n", 256)} {
		if _, err := os.Stat(filepath.Join(tm.dir, n)); err == nil {
			t.Errorf("%q resolves in the mount", n)
		}
	}
	// ".." from the mount's root is the kernel's business: the parent.
	if st, err := os.Stat(filepath.Join(tm.dir, "..")); err != nil || !os.SameFile(st, mustStat(t, parent)) {
		t.Errorf("mnt/.. is not the mount point's parent: %v", err)
	}
	if others, _ := os.ReadDir(parent); len(others) != 1 {
		t.Errorf("the mount point's parent holds %d entries, want only the mount point", len(others))
	}
}

func mustStat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
