package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path"
	"sort"
	"strings"
	"testing"
	"time"
)

// tree is a dataset: file path → content. Directories are implied.
type tree map[string][]byte

// manyFiles is the number of files in directory "many" (plus one
// subdirectory, so an S3 listing of it needs two pages of 1,000 keys).
const manyFiles = 1000

// testTree returns the dataset the conformance suite checks: empty, tiny
// and multi-MiB files, nested directories, names with spaces and unicode,
// and a directory of more than 1,000 entries.
func testTree() tree {
	rnd := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 3<<20+12345)
	for i := range big {
		big[i] = byte(rnd.Uint32())
	}
	tr := tree{
		"empty":                      {},
		"one":                        {'x'},
		"big.bin":                    big,
		"a/b/c/deep.txt":             []byte("deep inside\n"),
		"a/b/sibling":                []byte("sibling"),
		"a/file with spaces.txt":     []byte("spaces are fine"),
		"ünïcödé/日本語 ファイル.txt":       []byte("こんにちは"),
		"many/sub/inner":             []byte("inner"),
		"odd-chars/a+b=c&d%20e#f?.x": []byte("odd"),
	}
	for i := 0; i < manyFiles; i++ {
		tr[fmt.Sprintf("many/f%04d", i)] = []byte(fmt.Sprintf("file %d", i))
	}
	return tr
}

// dirs returns every directory of tr ("" included) with its sorted
// expected entries.
func (tr tree) dirs() map[string][]Entry {
	out := map[string][]Entry{"": nil}
	seen := map[string]bool{}
	add := func(dir string, e Entry) {
		k := dir + "\x00" + e.Name
		if !seen[k] {
			seen[k] = true
			out[dir] = append(out[dir], e)
		}
	}
	for p, data := range tr {
		dir, name := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		add(dir, Entry{Name: name, Size: int64(len(data))})
		for dir != "" {
			parent, dname := path.Split(dir)
			parent = strings.TrimSuffix(parent, "/")
			add(parent, Entry{Name: dname, IsDir: true})
			if _, ok := out[dir]; !ok {
				out[dir] = nil
			}
			dir = parent
		}
	}
	for _, es := range out {
		sort.Slice(es, func(i, j int) bool { return es[i].Name < es[j].Name })
	}
	return out
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// checkSource runs the read-only conformance suite against src, which must
// serve exactly tr.
func checkSource(t *testing.T, src Source, tr tree) {
	ctx := testCtx(t)
	dirs := tr.dirs()
	versions := map[string]string{}

	t.Run("List", func(t *testing.T) {
		for dir, want := range dirs {
			got, err := src.List(ctx, dir)
			if err != nil {
				t.Fatalf("List(%q): %v", dir, err)
			}
			if len(got) != len(want) {
				t.Fatalf("List(%q): %d entries, want %d: %v", dir, len(got), len(want), names(got))
			}
			for i := range want {
				g, w := got[i], want[i]
				if g.Name != w.Name || g.IsDir != w.IsDir || g.Size != w.Size {
					t.Errorf("List(%q)[%d] = {%q dir=%v size=%d}, want {%q dir=%v size=%d}",
						dir, i, g.Name, g.IsDir, g.Size, w.Name, w.IsDir, w.Size)
				}
				if !g.IsDir && g.Version == "" {
					t.Errorf("List(%q)[%d] %q has no Version", dir, i, g.Name)
				}
				if g.IsDir && g.Version != "" {
					t.Errorf("List(%q)[%d] directory %q has Version %q", dir, i, g.Name, g.Version)
				}
				if !g.IsDir {
					versions[path.Join(dir, g.Name)] = g.Version
				}
			}
		}
	})

	t.Run("Stat", func(t *testing.T) {
		root, err := src.Stat(ctx, "")
		if err != nil || !root.IsDir || root.Name != "" {
			t.Fatalf("Stat(\"\") = %+v, %v; want the root directory", root, err)
		}
		for dir := range dirs {
			if dir == "" {
				continue
			}
			e, err := src.Stat(ctx, dir)
			if err != nil || !e.IsDir || e.Name != path.Base(dir) {
				t.Errorf("Stat(%q) = %+v, %v; want directory %q", dir, e, err, path.Base(dir))
			}
		}
		for p, data := range tr {
			if strings.HasPrefix(p, "many/f") && !strings.HasSuffix(p, "7") {
				continue // a sample is enough
			}
			e, err := src.Stat(ctx, p)
			if err != nil {
				t.Errorf("Stat(%q): %v", p, err)
				continue
			}
			if e.IsDir || e.Name != path.Base(p) || e.Size != int64(len(data)) || e.Version == "" {
				t.Errorf("Stat(%q) = %+v; want file %q of %d bytes with a Version", p, e, path.Base(p), len(data))
			}
			if v, ok := versions[p]; ok && v != e.Version {
				t.Errorf("Stat(%q).Version = %q, List said %q", p, e.Version, v)
			}
		}
	})

	t.Run("ReadAt", func(t *testing.T) {
		for p, data := range tr {
			if strings.HasPrefix(p, "many/f") && !strings.HasSuffix(p, "42") {
				continue
			}
			e, err := src.Stat(ctx, p)
			if err != nil {
				t.Fatalf("Stat(%q): %v", p, err)
			}
			if len(data) > 0 {
				got := make([]byte, len(data))
				if err := src.ReadAt(ctx, p, e.Version, got, 0); err != nil {
					t.Errorf("ReadAt(%q) whole: %v", p, err)
				} else if !bytes.Equal(got, data) {
					t.Errorf("ReadAt(%q) whole: wrong bytes", p)
				}
				last := make([]byte, 1)
				if err := src.ReadAt(ctx, p, e.Version, last, int64(len(data)-1)); err != nil || last[0] != data[len(data)-1] {
					t.Errorf("ReadAt(%q) last byte = %q, %v; want %q", p, last, err, data[len(data)-1:])
				}
			}
			// Past the end: crossing it and starting at it.
			for _, c := range []struct{ off, n int64 }{
				{int64(len(data)), 1}, {int64(len(data)) + 100, 10}, {max(int64(len(data))-2, 0), 3},
			} {
				err := src.ReadAt(ctx, p, e.Version, make([]byte, c.n), c.off)
				if !errors.Is(err, ErrOutOfRange) {
					t.Errorf("ReadAt(%q, off %d, len %d) = %v; want ErrOutOfRange", p, c.off, c.n, err)
				}
			}
		}
		// Random ranges of the largest file, including ones ending at its end.
		var bigName string
		for p, data := range tr {
			if len(data) > len(tr[bigName]) {
				bigName = p
			}
		}
		big := tr[bigName]
		if len(big) < 2 {
			return
		}
		e, err := src.Stat(ctx, bigName)
		if err != nil {
			t.Fatal(err)
		}
		rnd := rand.New(rand.NewPCG(3, 4))
		for i := 0; i < 40; i++ {
			n := 1 + rnd.IntN(min(300<<10, len(big)))
			off := rnd.IntN(len(big) - n + 1)
			if i%10 == 0 {
				off = len(big) - n
			}
			got := make([]byte, n)
			if err := src.ReadAt(ctx, bigName, e.Version, got, int64(off)); err != nil {
				t.Fatalf("ReadAt(%s, %d, %d): %v", bigName, off, n, err)
			}
			if !bytes.Equal(got, big[off:off+n]) {
				t.Fatalf("ReadAt(%s, %d, %d): wrong bytes", bigName, off, n)
			}
		}
		if err := src.ReadAt(ctx, bigName, e.Version, nil, 1); err != nil {
			t.Errorf("ReadAt of 0 bytes: %v", err)
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		for _, p := range []string{"nope", "a/nope", "a/b/c/deep.txt/below", "nope/deeper"} {
			if _, err := src.Stat(ctx, p); !errors.Is(err, ErrNotFound) {
				t.Errorf("Stat(%q) = %v; want ErrNotFound", p, err)
			}
			if _, err := src.List(ctx, p); !errors.Is(err, ErrNotFound) {
				t.Errorf("List(%q) = %v; want ErrNotFound", p, err)
			}
			if err := src.ReadAt(ctx, p, "", make([]byte, 1), 0); !errors.Is(err, ErrNotFound) {
				t.Errorf("ReadAt(%q) = %v; want ErrNotFound", p, err)
			}
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		for _, p := range []string{"../etc/passwd", "/abs", "a//b", "a/./b", "a/..", "a/"} {
			if _, err := src.Stat(ctx, p); !errors.Is(err, ErrInvalid) {
				t.Errorf("Stat(%q) = %v; want ErrInvalid", p, err)
			}
			if _, err := src.List(ctx, p); !errors.Is(err, ErrInvalid) {
				t.Errorf("List(%q) = %v; want ErrInvalid", p, err)
			}
			if err := src.ReadAt(ctx, p, "", make([]byte, 1), 0); !errors.Is(err, ErrInvalid) {
				t.Errorf("ReadAt(%q) = %v; want ErrInvalid", p, err)
			}
		}
		if err := src.ReadAt(ctx, "one", "", make([]byte, 1), -1); !errors.Is(err, ErrInvalid) {
			t.Errorf("ReadAt at offset -1 = %v; want ErrInvalid", err)
		}
	})
}

func names(es []Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Name
		if e.IsDir {
			out[i] += "/"
		}
	}
	if len(out) > 20 {
		out = append(out[:20], "...")
	}
	return out
}
