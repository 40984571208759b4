package fusefs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"

	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

const testBlock = 256 << 10

// dataset is the conformance data set: edge sizes, nesting, odd names and
// a 1,000-entry directory.
func dataset() map[string][]byte {
	d := map[string][]byte{
		"empty":                 {},
		"one":                   {'x'},
		"three-blocks-plus-one": testutil.RandBytes(3*testBlock+1, 1),
		"exact-block":           testutil.RandBytes(testBlock, 2),
		"big.bin":               testutil.RandBytes(5*testBlock+777, 3),
		"a/b/c/nested.txt":      []byte("nested file\n"),
		"with space/file 1.txt": []byte("spaces in names\n"),
		"ünïcødé/日本語.txt":       []byte("unicode names\n"),
		"a/sibling.bin":         testutil.RandBytes(12345, 4),
	}
	for i := 0; i < 1000; i++ {
		d[fmt.Sprintf("many/f%04d", i)] = []byte(fmt.Sprintf("file %d\n", i))
	}
	return d
}

type backend struct {
	name string
	open func(t *testing.T, files map[string][]byte) source.Source
}

func fileBackend(t *testing.T, files map[string][]byte) source.Source {
	root := t.TempDir()
	for p, data := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src, err := source.Parse("file://"+root, source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func s3Backend(t *testing.T, files map[string][]byte) source.Source {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	for p, data := range files {
		srv.Put(t, "data", "prefix/"+p, data)
	}
	src, err := source.Parse("s3://data/prefix?pathStyle=true&endpoint="+srv.Endpoint,
		source.Options{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	return source.WithRetry(src, source.DefaultRetryPolicy())
}

var backends = []backend{{"file", fileBackend}, {"s3", s3Backend}}

func TestConformance(t *testing.T) {
	files := dataset()
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			m := mountSource(t, be.open(t, files), mountConfig{blockSize: testBlock})
			t.Run("whole files equal the source", func(t *testing.T) {
				for p, want := range files {
					got, err := os.ReadFile(filepath.Join(m.dir, p))
					if err != nil || !bytes.Equal(got, want) {
						t.Fatalf("%s: err=%v, equal=%v (got %d bytes, want %d)", p, err, bytes.Equal(got, want), len(got), len(want))
					}
				}
			})
			t.Run("random offsets and block edges", func(t *testing.T) {
				want := files["big.bin"]
				f, err := os.Open(filepath.Join(m.dir, "big.bin"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				r := rand.New(rand.NewPCG(5, 5))
				offs := []int64{0, testBlock - 1, testBlock, 2*testBlock - 3, int64(len(want)) - 1}
				for i := 0; i < 200; i++ {
					offs = append(offs, r.Int64N(int64(len(want))))
				}
				for _, off := range offs {
					n := 1 + r.IntN(3*testBlock)
					buf := make([]byte, n)
					got, err := f.ReadAt(buf, off)
					end := min(off+int64(n), int64(len(want)))
					if (err != nil && err != io.EOF) || !bytes.Equal(buf[:got], want[off:end]) {
						t.Fatalf("ReadAt(%d, %d): got %d bytes, err %v, equal=%v", off, n, got, err, bytes.Equal(buf[:got], want[off:end]))
					}
				}
			})
			t.Run("listings", func(t *testing.T) {
				entries, err := os.ReadDir(filepath.Join(m.dir, "many"))
				if err != nil || len(entries) != 1000 {
					t.Fatalf("many/: %d entries, err %v; want 1000", len(entries), err)
				}
				root, _ := os.ReadDir(m.dir)
				var names []string
				for _, e := range root {
					names = append(names, e.Name())
				}
				sort.Strings(names)
				want := []string{"a", "big.bin", "empty", "exact-block", "many", "one", "three-blocks-plus-one", "with space", "ünïcødé"}
				if fmt.Sprint(names) != fmt.Sprint(want) {
					t.Fatalf("root: %v, want %v", names, want)
				}
				fi, err := os.Stat(filepath.Join(m.dir, "three-blocks-plus-one"))
				if err != nil || fi.Size() != 3*testBlock+1 || fi.IsDir() {
					t.Fatalf("stat: %v %v", fi, err)
				}
			})
			t.Run("read-only", func(t *testing.T) {
				cases := map[string]func() error{
					"write":  func() error { return os.WriteFile(filepath.Join(m.dir, "one"), []byte("y"), 0o644) },
					"create": func() error { return os.WriteFile(filepath.Join(m.dir, "new"), []byte("y"), 0o644) },
					"unlink": func() error { return os.Remove(filepath.Join(m.dir, "one")) },
					"mkdir":  func() error { return os.Mkdir(filepath.Join(m.dir, "d"), 0o755) },
					"rename": func() error { return os.Rename(filepath.Join(m.dir, "one"), filepath.Join(m.dir, "two")) },
				}
				for name, op := range cases {
					if err := op(); !errors.Is(err, syscall.EROFS) {
						t.Errorf("%s: got %v, want EROFS", name, err)
					}
				}
			})
			t.Run("missing names", func(t *testing.T) {
				if _, err := os.Stat(filepath.Join(m.dir, "nope", "x")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("got %v, want ENOENT", err)
				}
			})
		})
	}
}

func TestConcurrentReadersFetchEachBlockOnce(t *testing.T) {
	files := map[string][]byte{}
	for i := 0; i < 4; i++ {
		files[fmt.Sprintf("f%d", i)] = testutil.RandBytes(6*testBlock+100*i, uint64(10+i))
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			for _, tc := range []struct {
				name  string
				files []string
			}{{"one file", []string{"f0"}}, {"different files", []string{"f0", "f1", "f2", "f3"}}} {
				t.Run(tc.name, func(t *testing.T) {
					m := mountSource(t, be.open(t, files), mountConfig{blockSize: testBlock})
					var wg sync.WaitGroup
					errs := make(chan error, 32)
					for r := 0; r < 32; r++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							p := tc.files[r%len(tc.files)]
							got, err := os.ReadFile(filepath.Join(m.dir, p))
							if err != nil || !bytes.Equal(got, files[p]) {
								errs <- fmt.Errorf("reader %d of %s: err %v, equal %v", r, p, err, bytes.Equal(got, files[p]))
							}
						}()
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						t.Error(err)
					}
					if n := m.getter.maxPerBlock(); n != 1 {
						t.Errorf("a block was fetched from the origin %d times, want 1", n)
					}
					for _, p := range tc.files {
						want := int((int64(len(files[p])) + testBlock - 1) / testBlock)
						if got := m.getter.fetchedOf(p); got != want {
							t.Errorf("origin fetches of %s: %d, want %d", p, got, want)
						}
					}
					// Readahead goes on into the next file of the directory,
					// at most its window (4 blocks), and no further.
					if next := fmt.Sprintf("f%d", len(tc.files)); files[next] != nil {
						if got := m.getter.fetchedOf(next); got > 4 {
							t.Errorf("%d blocks of the next file %s fetched ahead, want at most 4", got, next)
						}
					}
				})
			}
		})
	}
}
