package listcache

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
)

// countingSource is a fake origin for the cache's own logic: it counts
// listings and serves a fixed tree. Real sources are tested in their package.
type countingSource struct {
	lists atomic.Int64
	delay time.Duration
	mu    sync.Mutex
	dirs  map[string][]source.Entry
}

func (s *countingSource) ID() string { return "fake://" }
func (s *countingSource) List(ctx context.Context, dir string) ([]source.Entry, error) {
	s.lists.Add(1)
	time.Sleep(s.delay)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.dirs[dir]
	if !ok {
		return nil, source.ErrNotFound
	}
	return append([]source.Entry(nil), e...), nil
}
func (s *countingSource) Stat(ctx context.Context, p string) (source.Entry, error) {
	return source.Entry{}, errors.New("unused")
}
func (s *countingSource) ReadAt(ctx context.Context, p, v string, b []byte, off int64) error {
	return errors.New("unused")
}

func newTree() *countingSource {
	return &countingSource{dirs: map[string][]source.Entry{
		"":  {{Name: "z.bin", Size: 3, Version: "v1"}, {Name: "a", IsDir: true}, {Name: "m.txt", Size: 1, Version: "v1"}},
		"a": {{Name: "b.txt", Size: 2, Version: "v1"}},
	}}
}

func TestLookupAndStat(t *testing.T) {
	c := New(newTree(), time.Minute)
	ctx := context.Background()
	tests := []struct {
		path    string
		wantErr error
		isDir   bool
		size    int64
	}{
		{"", nil, true, 0},
		{"a", nil, true, 0},
		{"a/b.txt", nil, false, 2},
		{"z.bin", nil, false, 3},
		{"nope", source.ErrNotFound, false, 0},
		{"a/nope", source.ErrNotFound, false, 0},
		{"missing/dir/x", source.ErrNotFound, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			e, err := c.Stat(ctx, tc.path)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Stat(%q) err = %v, want %v", tc.path, err, tc.wantErr)
			}
			if err == nil && (e.IsDir != tc.isDir || e.Size != tc.size) {
				t.Fatalf("Stat(%q) = %+v", tc.path, e)
			}
		})
	}
	entries, _ := c.List(ctx, "")
	if entries[0].Name != "a" || entries[2].Name != "z.bin" {
		t.Errorf("listing not sorted: %v", entries)
	}
}

func TestTTLInvalidateRefresh(t *testing.T) {
	src := newTree()
	c := New(src, time.Minute)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	ctx := context.Background()
	steps := []struct {
		name      string
		do        func()
		wantLists int64
	}{
		{"first listing goes to the origin", func() { c.List(ctx, "") }, 1},
		{"within the TTL it is cached", func() { c.List(ctx, ""); c.Lookup(ctx, "", "m.txt") }, 1},
		{"after the TTL it is listed again", func() { now = now.Add(61 * time.Second); c.List(ctx, "") }, 2},
		{"Invalidate forgets one directory", func() { c.Invalidate(""); c.List(ctx, ""); c.List(ctx, "a") }, 4},
		{"Refresh forgets all", func() { c.Refresh(); c.List(ctx, ""); c.List(ctx, "a") }, 6},
	}
	for _, s := range steps {
		s.do()
		if got := src.lists.Load(); got != s.wantLists {
			t.Fatalf("%s: %d origin listings, want %d", s.name, got, s.wantLists)
		}
	}
}

func TestConcurrentListingsShareOneOriginCall(t *testing.T) {
	src := newTree()
	src.delay = 50 * time.Millisecond
	c := New(src, time.Minute)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := c.List(context.Background(), "a"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := src.lists.Load(); got != 1 {
		t.Errorf("%d origin listings for 20 concurrent readers, want 1", got)
	}
}

// listed is a source whose root lists entries as given.
type listed struct{ entries []source.Entry }

func (s listed) ID() string { return "listed://" }
func (s listed) List(ctx context.Context, dir string) ([]source.Entry, error) {
	return append([]source.Entry(nil), s.entries...), nil
}
func (s listed) Stat(ctx context.Context, p string) (source.Entry, error) {
	return source.Entry{}, source.ErrNotFound
}
func (s listed) ReadAt(ctx context.Context, p, v string, b []byte, off int64) error {
	return source.ErrNotFound
}

// TestListingsHoldOnlySafeNames: whatever a source lists, a cached listing
// holds only names a directory can hold, each once, a file before a
// directory of the same name.
func TestListingsHoldOnlySafeNames(t *testing.T) {
	f := func(n string) source.Entry { return source.Entry{Name: n, Size: 1} }
	d := func(n string) source.Entry { return source.Entry{Name: n, IsDir: true} }
	tests := []struct {
		name    string
		entries []source.Entry
		want    []source.Entry
	}{
		{"safe names pass, sorted", []source.Entry{f("b"), d("a"), f("ünï")}, []source.Entry{d("a"), f("b"), f("ünï")}},
		{"climbing and empty names", []source.Entry{f("../x"), f("a/../../b"), f("/abs"), f("."), d(".."), f(""), f("ok")},
			[]source.Entry{f("ok")}},
		{"NUL and overlong names", []source.Entry{f("a\x00b"), f(strings.Repeat("n", 256)), f(strings.Repeat("k", 255))},
			[]source.Entry{f(strings.Repeat("k", 255))}},
		{"a file and a directory of one name", []source.Entry{d("both"), f("both"), d("both")}, []source.Entry{f("both")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := New(listed{tc.entries}, time.Minute)
			got, err := c.List(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("List = %+v, want %+v", got, tc.want)
			}
		})
	}
}
