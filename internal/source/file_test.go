package source

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// writeTree writes tr below dir.
func writeTree(t *testing.T, dir string, tr tree) {
	t.Helper()
	for p, data := range tr {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func openFile(t *testing.T, dir string) Source {
	t.Helper()
	src, err := Parse("file://"+filepath.ToSlash(dir), Options{})
	if err != nil {
		t.Fatalf("Parse(file://%s): %v", dir, err)
	}
	return src
}

func TestFileConformance(t *testing.T) {
	dir := t.TempDir()
	tr := testTree()
	writeTree(t, dir, tr)
	src := openFile(t, dir)
	if want := "file://" + filepath.ToSlash(dir); src.ID() != want {
		t.Errorf("ID() = %q, want %q", src.ID(), want)
	}
	checkSource(t, src, tr)
}

func TestFileSpecialEntries(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, tree{"real/data.bin": []byte("data")})
	ctx := testCtx(t)
	// A symlink to a file and to a directory are followed; a dangling one
	// and a FIFO are left out.
	for _, l := range []struct{ target, name string }{
		{"real/data.bin", "link-file"}, {"real", "link-dir"}, {"missing", "dangling"},
	} {
		if err := os.Symlink(filepath.Join(dir, l.target), filepath.Join(dir, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Logf("no FIFO: %v", err)
	}
	src := openFile(t, dir)
	got, err := src.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"link-dir/", "link-file", "real/"}
	if g := names(got); len(g) != len(want) || g[0] != want[0] || g[1] != want[1] || g[2] != want[2] {
		t.Fatalf("List(\"\") = %v, want %v", g, want)
	}
	buf := make([]byte, 4)
	if err := src.ReadAt(ctx, "link-dir/data.bin", got[1].Version, buf, 0); err != nil || string(buf) != "data" {
		t.Errorf("ReadAt through symlinks = %q, %v", buf, err)
	}
	if _, err := src.Stat(ctx, "dangling"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat(dangling) = %v, want ErrNotFound", err)
	}
	if err := src.ReadAt(ctx, "real", "", buf, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("ReadAt of a directory = %v, want ErrInvalid", err)
	}
}

func TestFileVersionChanged(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "obj")
	if err := os.WriteFile(p, []byte("version one"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	src := openFile(t, dir)
	old, err := src.Stat(ctx, "obj")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		change func()
	}{
		{"same size, new mtime", func() {
			if err := os.WriteFile(p, []byte("version two"), 0o644); err != nil {
				t.Fatal(err)
			}
			// The kernel's coarse clock may leave mtime unchanged for a
			// quick rewrite; set it explicitly.
			mt := time.Now().Add(time.Second)
			if err := os.Chtimes(p, mt, mt); err != nil {
				t.Fatal(err)
			}
		}},
		{"new size", func() {
			if err := os.WriteFile(p, []byte("v3"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.change()
			buf := make([]byte, 2)
			if err := src.ReadAt(ctx, "obj", old.Version, buf, 0); !errors.Is(err, ErrVersionChanged) {
				t.Fatalf("ReadAt with the old version = %v, want ErrVersionChanged", err)
			}
			cur, err := src.Stat(ctx, "obj")
			if err != nil {
				t.Fatal(err)
			}
			if cur.Version == old.Version {
				t.Fatalf("Version unchanged: %q", cur.Version)
			}
			data, _ := os.ReadFile(p)
			if err := src.ReadAt(ctx, "obj", cur.Version, buf, 0); err != nil || !bytes.Equal(buf, data[:2]) {
				t.Fatalf("ReadAt with the new version = %q, %v; want %q", buf, err, data[:2])
			}
			old = cur
		})
	}
}

func TestFilePermission(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores file permissions")
	}
	dir := t.TempDir()
	writeTree(t, dir, tree{"secret/x": []byte("x")})
	if err := os.Chmod(filepath.Join(dir, "secret"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(dir, "secret"), 0o755) })
	src := openFile(t, dir)
	if _, err := src.List(testCtx(t), "secret"); !errors.Is(err, ErrPermission) {
		t.Errorf("List(secret) = %v, want ErrPermission", err)
	}
}
