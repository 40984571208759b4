package listcache

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
)

// pagedSource lists its root in pages; page k (k ≥ 1) is handed out only
// once gates[k-1] is closed, so a test holds a listing part way through.
type pagedSource struct {
	listed
	pages [][]source.Entry
	gates []chan struct{}
	err   error // returned after the last page
}

func (s *pagedSource) ListPages(ctx context.Context, dir string, page func([]source.Entry) error) error {
	for k, p := range s.pages {
		if k > 0 {
			select {
			case <-s.gates[k-1]:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := page(append([]source.Entry(nil), p...)); err != nil {
			return err
		}
	}
	return s.err
}

func newPaged(pages ...[]source.Entry) *pagedSource {
	s := &pagedSource{pages: pages}
	for range len(pages) - 1 {
		s.gates = append(s.gates, make(chan struct{}))
	}
	return s
}

func files(names ...string) []source.Entry {
	out := make([]source.Entry, len(names))
	for i, n := range names {
		out[i] = source.Entry{Name: n, Size: int64(i + 1), Version: "v" + n}
	}
	return out
}

// TestEntriesArriveBeforeTheListingEnds: a reader of a directory gets the
// first page, and a lookup of a name on it is answered, while the origin
// still lists the rest; at the end the listing is whole and sorted.
func TestEntriesArriveBeforeTheListingEnds(t *testing.T) {
	src := newPaged(files("b", "d"), files("a", "c"))
	c := New(src, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	r := c.Entries("")
	for _, want := range []string{"b", "d"} {
		e, ok, err := r.Next(ctx)
		if err != nil || !ok || e.Name != want {
			t.Fatalf("Next = %+v, %v, %v; want %q from the first page", e, ok, err, want)
		}
	}
	if e, err := c.Lookup(ctx, "", "d"); err != nil || e.Version != "vd" {
		t.Fatalf("Lookup(d) during the listing = %+v, %v", e, err)
	}
	short, stop := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := c.Lookup(short, "", "a")
	stop()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup of a name not listed yet = %v, want it to wait for the listing", err)
	}
	if _, ok := c.Listed(""); ok {
		t.Fatal("Listed reports a listing still in progress")
	}

	close(src.gates[0])
	var rest []string
	for {
		e, ok, err := r.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		rest = append(rest, e.Name)
	}
	if !reflect.DeepEqual(rest, []string{"a", "c"}) {
		t.Fatalf("rest of the stream = %q, want the second page", rest)
	}
	all, err := c.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(all); !reflect.DeepEqual(got, []string{"a", "b", "c", "d"}) {
		t.Fatalf("List = %q, want all four, sorted", got)
	}
	if _, err := c.Lookup(ctx, "", "zz"); !errors.Is(err, source.ErrNotFound) {
		t.Fatalf("Lookup of a missing name = %v, want ErrNotFound", err)
	}
	r.Seek(1)
	if e, ok, _ := r.Next(ctx); !ok || e.Name != "d" {
		t.Fatalf("after Seek(1), Next = %+v: want the arrival order kept (d)", e)
	}
}

func names(es []source.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Name
	}
	return out
}

// TestPagedListings: what a listing that comes in pages leaves in the
// cache, and what its readers see, for pages that repeat, fail or hold
// names no directory can hold.
func TestPagedListings(t *testing.T) {
	dir := func(n string) source.Entry { return source.Entry{Name: n, IsDir: true} }
	tests := []struct {
		name     string
		pages    [][]source.Entry
		err      error
		want     []string // the cached listing, sorted
		wantErr  error
		streamed int // entries a reader gets before the error
	}{
		{"pages in order", [][]source.Entry{files("a", "b"), files("c")}, nil, []string{"a", "b", "c"}, nil, 3},
		{"a retry repeats the first page", [][]source.Entry{files("a", "b"), files("a", "b"), files("c")}, nil,
			[]string{"a", "b", "c"}, nil, 3},
		{"a file over a directory of its name", [][]source.Entry{{dir("x")}, files("x", "y")}, nil, []string{"x", "y"}, nil, 2},
		{"unsafe names dropped", [][]source.Entry{files("../up", "ok", "")}, nil, []string{"ok"}, nil, 1},
		{"a failure after a page", [][]source.Entry{files("a")}, source.ErrPermission, nil, source.ErrPermission, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := newPaged(tc.pages...)
			src.err = tc.err
			for _, g := range src.gates {
				close(g)
			}
			c := New(src, time.Minute)
			ctx := context.Background()
			r := c.Entries("")
			n := 0
			var err error
			for {
				var ok bool
				if _, ok, err = r.Next(ctx); err != nil || !ok {
					break
				}
				n++
			}
			if !errors.Is(err, tc.wantErr) || n != tc.streamed {
				t.Fatalf("reader got %d entries then %v; want %d then %v", n, err, tc.streamed, tc.wantErr)
			}
			all, err := c.List(ctx, "")
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("List error %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil {
				if got := names(all); !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("List = %q, want %q", got, tc.want)
				}
				if x, _ := c.Lookup(ctx, "", "x"); len(tc.want) > 0 && tc.want[0] == "x" && x.IsDir {
					t.Fatal("x is listed as the directory, want the file")
				}
			}
		})
	}
}

// TestEntriesBound: the cached listings hold at most maxEntries entries;
// the listing fetched longest ago goes first, and comes back from the
// origin when asked for again.
func TestEntriesBound(t *testing.T) {
	src := &countingSource{dirs: map[string][]source.Entry{}}
	for d := range 4 {
		var es []source.Entry
		for i := range 100 {
			es = append(es, source.Entry{Name: fmt.Sprintf("f%03d", i), Size: 1})
		}
		src.dirs[fmt.Sprintf("d%d", d)] = es
	}
	c := New(src, time.Hour)
	c.maxEntries = 250
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	ctx := context.Background()
	for d := range 4 {
		now = now.Add(time.Second)
		if _, err := c.List(ctx, fmt.Sprintf("d%d", d)); err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	var held []string
	for k := range c.dirs {
		held = append(held, k)
	}
	entries := c.entries
	c.mu.Unlock()
	sort.Strings(held)
	if !reflect.DeepEqual(held, []string{"d2", "d3"}) || entries != 200 {
		t.Fatalf("cached %q (%d entries), want the two newest listings, 200 entries", held, entries)
	}
	before := src.lists.Load()
	if _, err := c.Lookup(ctx, "d0", "f001"); err != nil {
		t.Fatal(err)
	}
	if src.lists.Load() != before+1 {
		t.Fatal("an evicted listing was not listed again")
	}
}
