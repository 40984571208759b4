package fetch

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

const testBlock = 64 << 10

// dataset is the copy's conformance set: empty and one-byte files, sizes
// at the block edges, nested directories, unicode and odd names.
func dataset() map[string][]byte {
	return map[string][]byte{
		"empty":                      {},
		"one":                        {'x'},
		"edge/block-1":               testutil.RandBytes(testBlock-1, 1),
		"edge/block":                 testutil.RandBytes(testBlock, 2),
		"edge/block+1":               testutil.RandBytes(testBlock+1, 3),
		"big.bin":                    testutil.RandBytes(5*testBlock+777, 4),
		"a/b/c/deep.txt":             []byte("deep inside\n"),
		"a/file with spaces.txt":     []byte("spaces are fine"),
		"ünïcödé/日本語 ファイル.txt":       []byte("こんにちは"),
		"odd-chars/a+b=c&d%20e#f?.x": []byte("odd"),
	}
}

// origin is a real versitygw holding files, behind a counting proxy.
type origin struct {
	proxy *faultproxy.Proxy
	src   source.Source
}

func startOrigin(t *testing.T, files map[string][]byte) *origin {
	t.Helper()
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	for k, v := range files {
		srv.Put(t, "data", k, v)
	}
	proxy, err := faultproxy.New(srv.Endpoint, faultproxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	raw, err := source.Parse("s3://data?pathStyle=true&endpoint="+proxy.URL(),
		source.Options{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	return &origin{proxy: proxy, src: source.WithRetry(raw, source.DefaultRetryPolicy())}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// tree reads every regular file under dir (path → content) and fails on
// anything left under a partial file's name.
func tree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(p, partialSuffix) {
			t.Errorf("partial file left behind: %s", p)
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, got, want map[string][]byte) {
	t.Helper()
	var names []string
	for k := range want {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if g, ok := got[k]; !ok {
			t.Errorf("%s: not copied", k)
		} else if !bytes.Equal(g, want[k]) {
			t.Errorf("%s: %d bytes differ from the origin's %d", k, len(g), len(want[k]))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: copied but not wanted", k)
		}
	}
}

// subset is the entries of files below prefix (renamed relative to it)
// whose relative path keep accepts.
func subset(files map[string][]byte, prefix string, keep func(string) bool) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range files {
		rel, ok := strings.CutPrefix(k, prefix)
		if ok && keep(rel) {
			out[rel] = v
		}
	}
	return out
}

func TestFetchCopiesEveryByte(t *testing.T) {
	files := dataset()
	o := startOrigin(t, files)
	all := func(string) bool { return true }
	tests := []struct {
		name    string
		root    string
		include []string
		want    map[string][]byte
	}{
		{"whole dataset", "", nil, files},
		{"one directory", "a", nil, subset(files, "a/", all)},
		{"one file", "edge/block+1", nil, map[string][]byte{"block+1": files["edge/block+1"]}},
		{"globs", "", []string{"**/*.txt", "edge/block?1"}, subset(files, "", func(p string) bool {
			return strings.HasSuffix(p, ".txt") || p == "edge/block-1" || p == "edge/block+1"
		})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "copy")
			res, err := Run(ctxT(t), Config{Source: o.src, Root: tc.root, Dir: dir, Include: tc.include,
				BlockSize: testBlock, Parallel: 4})
			if err != nil {
				t.Fatal(err)
			}
			sameTree(t, tree(t, dir), tc.want)
			if res.Files != len(tc.want) || res.Skipped != 0 {
				t.Errorf("result %+v, want %d files copied", res, len(tc.want))
			}
		})
	}
}

// TestFetchResumes: a rerun copies only what is missing, stale or partial,
// and the origin sends only those bytes; mtimes are the origin's.
func TestFetchResumes(t *testing.T) {
	files := dataset()
	o := startOrigin(t, files)
	dir := t.TempDir()
	if _, err := Run(ctxT(t), Config{Source: o.src, Dir: dir, BlockSize: testBlock}); err != nil {
		t.Fatal(err)
	}
	e, err := o.src.Stat(ctxT(t), "big.bin")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "big.bin"))
	if err != nil || !st.ModTime().Equal(e.ModTime) {
		t.Fatalf("big.bin mtime %v, want the origin's %v (%v)", st.ModTime(), e.ModTime, err)
	}
	// A kill mid-copy leaves a partial file and no final one; a damaged
	// copy has the wrong size; a deleted one is missing.
	os.Remove(filepath.Join(dir, "big.bin"))
	os.WriteFile(filepath.Join(dir, ".big.bin"+partialSuffix), []byte("half"), 0o644)
	os.WriteFile(filepath.Join(dir, "edge/block"), []byte("short"), 0o644)
	os.Remove(filepath.Join(dir, "one"))
	before := o.proxy.BodyBytes()
	res, err := Run(ctxT(t), Config{Source: o.src, Dir: dir, BlockSize: testBlock})
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, tree(t, dir), files)
	want := int64(len(files["big.bin"]) + len(files["edge/block"]) + len(files["one"]))
	// The proxy counts the listings' XML too: a few KiB.
	if got := o.proxy.BodyBytes() - before; got < want || got > want+32<<10 {
		t.Errorf("the rerun read %d bytes from the origin, want %d (the three damaged files) and the listings", got, want)
	}
	if res.Files != 3 || res.Skipped != len(files)-3 {
		t.Errorf("rerun result %+v, want 3 copied and %d skipped", res, len(files)-3)
	}
}

// failing is a source whose reads of one path fail.
type failing struct {
	source.Source
	path string
}

var errBroken = errors.New("broken block")

func (f failing) ReadAt(ctx context.Context, p, v string, buf []byte, off int64) error {
	if p == f.path && off > 0 {
		return errBroken
	}
	return f.Source.ReadAt(ctx, p, v, buf, off)
}

func TestFetchBadInput(t *testing.T) {
	files := dataset()
	o := startOrigin(t, files)
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o644)
	tests := []struct {
		name string
		cfg  func(dir string) Config
		want []string // in the error
	}{
		{"a path not in the dataset", func(dir string) Config { return Config{Source: o.src, Root: "nope", Dir: dir} },
			[]string{`"/nope"`, "not in the dataset"}},
		{"a destination that is a file", func(string) Config { return Config{Source: o.src, Dir: notDir} },
			[]string{notDir}},
		{"a bad glob", func(dir string) Config { return Config{Source: o.src, Dir: dir, Include: []string{"[x"}} },
			[]string{"--include", "[x"}},
		{"a block that fails", func(dir string) Config {
			return Config{Source: failing{o.src, "big.bin"}, Dir: dir, BlockSize: testBlock}
		}, []string{`"big.bin"`, "broken block"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "copy")
			_, err := Run(ctxT(t), tc.cfg(dir))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			if _, serr := os.Stat(dir); serr == nil {
				got := tree(t, dir) // fails on partial files
				for k, v := range got {
					if !bytes.Equal(v, files[k]) {
						t.Errorf("%s is under its final name with wrong bytes", k)
					}
				}
			}
		})
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		glob, rel string
		want      bool
	}{
		{"*.txt", "a.txt", true},
		{"*.txt", "d/a.txt", false},
		{"**/*.txt", "a.txt", true},
		{"**/*.txt", "d/e/a.txt", true},
		{"d/**/*.bin", "d/x.bin", true},
		{"d/**/*.bin", "d/e/f/x.bin", true},
		{"d/**/*.bin", "e/x.bin", false},
		{"shard-0?.bin", "shard-01.bin", true},
	}
	for _, tc := range tests {
		if got := match(tc.glob, tc.rel); got != tc.want {
			t.Errorf("match(%q, %q) = %v, want %v", tc.glob, tc.rel, got, tc.want)
		}
	}
}
