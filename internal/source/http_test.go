package source

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil"
)

// origin is an httptest server for one object whose content, ETag and
// modification time tests can change. It serves with http.ServeContent,
// which implements Range, If-Match and If-Unmodified-Since.
type origin struct {
	mu      sync.Mutex
	data    []byte
	etag    string // "" sends no ETag
	mtime   time.Time
	status  int  // ≠ 0: answer every request with this status
	noRange bool // ignore Range: always 200 with the whole body
	noHead  bool // refuse HEAD with 405
	gets    atomic.Int64
	srv     *httptest.Server
}

func newOrigin(t *testing.T, data []byte, etag string) *origin {
	o := &origin{data: data, etag: etag, mtime: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}
	o.srv = httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(o.srv.Close)
	return o
}

// configure changes o under its lock.
func (o *origin) configure(f func(o *origin)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f(o)
}

func (o *origin) set(data []byte, etag string, mtime time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.data, o.etag, o.mtime = data, etag, mtime
}

func (o *origin) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	data, etag, mtime, status, noRange, noHead := o.data, o.etag, o.mtime, o.status, o.noRange, o.noHead
	o.mu.Unlock()
	if r.Method == http.MethodGet {
		o.gets.Add(1)
	}
	switch {
	case status != 0:
		http.Error(w, http.StatusText(status), status)
		return
	case noHead && r.Method == http.MethodHead:
		http.Error(w, "no HEAD here", http.StatusMethodNotAllowed)
		return
	case noRange:
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		if etag != "" {
			w.Header().Set("ETag", etag)
		}
		_, _ = w.Write(data)
		return
	}
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	http.ServeContent(w, r, "", mtime, bytes.NewReader(data))
}

func openHTTP(t *testing.T, rawURL string) Source {
	t.Helper()
	src, err := Parse(rawURL, Options{})
	if err != nil {
		t.Fatalf("Parse(%q): %v", rawURL, err)
	}
	return src
}

func TestHTTPReads(t *testing.T) {
	big := testutil.RandBytes(2<<20+77, 7)
	tests := []struct {
		name  string
		data  []byte
		etag  string
		setup func(*origin)
	}{
		{name: "etag", data: big, etag: `"v1"`},
		{name: "last-modified only", data: big},
		{name: "range ignored", data: big, etag: `"v1"`, setup: func(o *origin) { o.noRange = true }},
		{name: "head refused", data: big, etag: `"v1"`, setup: func(o *origin) { o.noHead = true }},
		{name: "one byte", data: []byte{'z'}, etag: `"z"`},
		{name: "empty", data: []byte{}, etag: `"e"`},
		{name: "empty head refused", data: []byte{}, etag: `"e"`, setup: func(o *origin) { o.noHead = true }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := newOrigin(t, tc.data, tc.etag)
			if tc.setup != nil {
				o.configure(tc.setup)
			}
			src := openHTTP(t, o.srv.URL+"/models/my%20weights.bin?token=abc")
			checkSource(t, src, tree{"my weights.bin": tc.data})
			if strings.Contains(src.ID(), "token") {
				t.Errorf("ID %q contains the query", src.ID())
			}
		})
	}
}

func TestHTTPVersionChanged(t *testing.T) {
	t0 := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name             string
		etag1, etag2     string
		mtime2           time.Time
		data2            []byte
		noRange          bool
		wantVersionStart string
	}{
		{name: "etag", etag1: `"v1"`, etag2: `"v2"`, mtime2: t0, data2: []byte("other bytes"), wantVersionStart: `"v1"`},
		{name: "etag, range ignored", etag1: `"v1"`, etag2: `"v2"`, mtime2: t0, data2: []byte("other bytes"),
			noRange: true, wantVersionStart: `"v1"`},
		{name: "last-modified", mtime2: t0.Add(time.Minute), data2: []byte("other bytes"), wantVersionStart: "lm:"},
		{name: "last-modified unchanged, size changed", mtime2: t0, data2: []byte("longer other bytes"),
			wantVersionStart: "lm:"},
		{name: "weak etag falls back to last-modified", etag1: `W/"w1"`, etag2: `W/"w1"`,
			mtime2: t0.Add(time.Minute), data2: []byte("other bytes"), wantVersionStart: "lm:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			o := newOrigin(t, []byte("first bytes"), tc.etag1)
			o.configure(func(o *origin) { o.noRange = tc.noRange })
			src := openHTTP(t, o.srv.URL+"/obj")
			e, err := src.Stat(ctx, "obj")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(e.Version, tc.wantVersionStart) {
				t.Errorf("Version = %q, want prefix %q", e.Version, tc.wantVersionStart)
			}
			buf := make([]byte, 5)
			if err := src.ReadAt(ctx, "obj", e.Version, buf, 0); err != nil || string(buf) != "first" {
				t.Fatalf("ReadAt = %q, %v", buf, err)
			}
			o.set(tc.data2, tc.etag2, tc.mtime2)
			if err := src.ReadAt(ctx, "obj", e.Version, buf, 0); !errors.Is(err, ErrVersionChanged) {
				t.Fatalf("ReadAt after the change = %q, %v; want ErrVersionChanged", buf, err)
			}
			e2, err := src.Stat(ctx, "obj")
			if err != nil || e2.Version == e.Version {
				t.Fatalf("Stat after the change = %+v, %v; want a new version", e2, err)
			}
			if err := src.ReadAt(ctx, "obj", e2.Version, buf, 0); err != nil || string(buf) != string(tc.data2[:5]) {
				t.Fatalf("ReadAt of the new version = %q, %v", buf, err)
			}
		})
	}
}

func TestHTTPStatusErrors(t *testing.T) {
	tests := []struct {
		status    int
		want      error // nil: transient
		permanent bool
	}{
		{http.StatusNotFound, ErrNotFound, true},
		{http.StatusGone, ErrNotFound, true},
		{http.StatusUnauthorized, ErrPermission, true},
		{http.StatusForbidden, ErrPermission, true},
		{http.StatusBadRequest, ErrInvalid, true},
		{http.StatusTooManyRequests, nil, false},
		{http.StatusInternalServerError, nil, false},
		{http.StatusServiceUnavailable, nil, false},
	}
	for _, tc := range tests {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			ctx := testCtx(t)
			o := newOrigin(t, []byte("data"), `"v"`)
			src := openHTTP(t, o.srv.URL+"/obj")
			o.configure(func(o *origin) { o.status = tc.status })
			_, serr := src.Stat(ctx, "obj")
			rerr := src.ReadAt(ctx, "obj", `"v"`, make([]byte, 2), 0)
			for _, err := range []error{serr, rerr} {
				if err == nil {
					t.Fatalf("status %d: no error", tc.status)
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("status %d: %v, want %v", tc.status, err, tc.want)
				}
				if IsPermanent(err) != tc.permanent {
					t.Errorf("status %d: IsPermanent(%v) = %v, want %v", tc.status, err, IsPermanent(err), tc.permanent)
				}
				if !strings.Contains(err.Error(), strconv.Itoa(tc.status)) {
					t.Errorf("error %q does not name the status", err)
				}
			}
		})
	}
}

func TestHTTPShortBody(t *testing.T) {
	// A server that promises a range and sends less, then closes.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v"`)
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", "100")
			return
		}
		w.Header().Set("Content-Range", "bytes 0-9/100")
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write([]byte("short"))
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(srv.Close)
	src := openHTTP(t, srv.URL+"/obj")
	err := src.ReadAt(testCtx(t), "obj", `"v"`, make([]byte, 10), 0)
	if !errors.Is(err, io.ErrUnexpectedEOF) || IsPermanent(err) {
		t.Fatalf("short body: %v; want a transient io.ErrUnexpectedEOF", err)
	}
}

func TestHTTPNames(t *testing.T) {
	tests := []struct{ url, name, id string }{
		{"http://h/a/b.bin", "b.bin", "http://h/a/b.bin"},
		{"http://h/", "index", "http://h/"},
		{"http://h", "index", "http://h"},
		{"http://h/dir/", "index", "http://h/dir/"},
		{"http://h/x%2Fy", "index", "http://h/x%2Fy"},
		{"http://h/%C3%BC%20x?q=1", "ü x", "http://h/%C3%BC%20x"},
		{"https://u:p@h:8443/f#frag", "f", "https://h:8443/f"},
	}
	for _, tc := range tests {
		src := openHTTP(t, tc.url)
		if got := src.(*httpSource).name; got != tc.name {
			t.Errorf("%s: name %q, want %q", tc.url, got, tc.name)
		}
		if src.ID() != tc.id {
			t.Errorf("%s: ID %q, want %q", tc.url, src.ID(), tc.id)
		}
	}
}

func TestHTTPRangeRequestsOnly(t *testing.T) {
	// A read of a small range of a large object must not transfer it all.
	data := testutil.RandBytes(8<<20, 9)
	var sent atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"big"`)
		cw := &countWriter{ResponseWriter: w, n: &sent}
		http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	src := openHTTP(t, srv.URL+"/big")
	buf := make([]byte, 4096)
	if err := src.ReadAt(testCtx(t), "big", `"big"`, buf, 5<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[5<<20:5<<20+4096]) {
		t.Fatal("wrong bytes")
	}
	if n := sent.Load(); n != 4096 {
		t.Errorf("server sent %d body bytes for a 4096-byte read", n)
	}
}

type countWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n.Add(int64(n))
	return n, err
}
