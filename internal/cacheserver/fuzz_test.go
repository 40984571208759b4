package cacheserver

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// fuzzMtime is the modification time of every fixture file, so that their
// versions ("<size hex>-<mtime ns hex>") are the same in every run and the
// committed seeds can name them.
var fuzzMtime = time.Unix(1_700_000_000, 0)

// fuzzFiles are the fixture files of the fuzzed worker's file origin:
// smaller than a block, several 64 KiB blocks, and empty.
var fuzzFiles = map[string]int{"a.txt": 100, "dir/b.bin": 150_000, "empty": 0}

// fuzzStatuses are the final statuses the worker API may answer: the ones
// the package doc lists, plus the mux's own 307 (redirect to the cleaned
// path) and 405 (a method other than GET/HEAD on a known path).
var fuzzStatuses = map[int]bool{
	200: true, 307: true, 400: true, 401: true, 403: true, 404: true, 405: true,
	412: true, 416: true, 429: true, 502: true, 503: true, 504: true,
}

// fuzzContent is the deterministic content of a fixture file of n bytes
// (an arithmetic sequence, so it never spells the token).
func fuzzContent(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7 % 251)
	}
	return b
}

// fuzzOrigin writes the fixture files into a temporary directory and
// returns it as a file source.
func fuzzOrigin(f *testing.F) source.Source {
	dir := f.TempDir()
	for p, n := range fuzzFiles {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(full, fuzzContent(n), 0o644); err != nil {
			f.Fatal(err)
		}
		if err := os.Chtimes(full, fuzzMtime, fuzzMtime); err != nil {
			f.Fatal(err)
		}
	}
	src, err := source.Parse("file://"+filepath.ToSlash(dir), source.Options{})
	if err != nil {
		f.Fatal(err)
	}
	return src
}

// fuzzServer is a worker API over src with a small memory-only block cache
// and the static token testToken. Each input gets a new one, so that its
// answer does not depend on what earlier inputs left in the caches.
func fuzzServer(t *testing.T, src source.Source) *Server {
	cache, err := blockcache.New(blockcache.Config{BlockSize: 64 << 10, MemoryBytes: 4 << 20,
		Getter: blockcache.OriginGetter{Source: src}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	api, err := NewServer(ServerConfig{Listings: listcache.New(src, time.Minute), Cache: cache,
		Auth: &StaticToken{token: []byte(testToken)}})
	if err != nil {
		t.Fatal(err)
	}
	return api
}

// finalRecorder records the final answer only: it drops the interim 102s
// the worker sends while a request is worked on, which
// httptest.ResponseRecorder would otherwise take as the status.
type finalRecorder struct {
	*httptest.ResponseRecorder
}

func (r finalRecorder) WriteHeader(code int) {
	if code >= 100 && code < 200 {
		return
	}
	r.ResponseRecorder.WriteHeader(code)
}

// fuzzRequest builds the request from the fuzzed parts without parsing a
// request line (httptest.NewRequest panics on a malformed one).
func fuzzRequest(t *testing.T, method, path, rawQuery, auth, timeout, readahead string) *http.Request {
	u := &url.URL{Path: path, RawQuery: rawQuery}
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil)
	req.Method = method
	req.URL = u
	req.RequestURI = u.RequestURI()
	for k, v := range map[string]string{"Authorization": auth, TimeoutHeader: timeout, ReadaheadHeader: readahead} {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	return req
}

// FuzzWorkerAPI sends requests with a fuzzed method, path, query and
// Authorization, X-Sluice-Timeout-Ms and X-Sluice-Readahead headers to one
// worker API over a real file origin. Every answer must have a documented
// status; a 200 read must carry exactly the asked-for bytes of the file
// with their CRC-32C; a 200 list or stat must be JSON; a 504 needs a
// client deadline under a second (a file origin answers at once); and no
// answer may show the token unless the URL itself carried it. The seed
// corpus is testdata/fuzz/FuzzWorkerAPI plus the cases below.
func FuzzWorkerAPI(f *testing.F) {
	bearer := "Bearer " + testToken
	f.Add("GET", "/v1/datasets/default/read", "path=a.txt&version=64-17979cfe362a0000&off=0&len=100", bearer, "", "")
	f.Add("GET", "/v1/datasets/default/read", "path=dir/b.bin&version=249f0-17979cfe362a0000&off=65536&len=65536", bearer, "30000", "1")
	f.Add("GET", "/v1/datasets/default/read", "path=dir/b.bin&version=249f0-17979cfe362a0000&off=60000&len=10000", bearer, "5000", "")
	f.Add("GET", "/v1/datasets/default/list", "path=dir", bearer, "", "")
	f.Add("GET", "/v1/datasets/default/stat", "path=empty", bearer, "", "")
	f.Add("GET", "/v1/datasets/default/read", "path=a.txt&version=64-17979cfe362a0000&off=0&len=10", "Bearer nope", "", "")
	f.Add("POST", "/v1/datasets/default/read", "", bearer, "", "")
	f.Add("GET", "/v1/datasets/x/../default/stat", "path=a.txt", bearer, "", "")
	src := fuzzOrigin(f)
	f.Fuzz(func(t *testing.T, method, path, rawQuery, auth, timeout, readahead string) {
		api := fuzzServer(t, src)
		req := fuzzRequest(t, method, path, rawQuery, auth, timeout, readahead)
		rec := finalRecorder{httptest.NewRecorder()}
		api.Handler().ServeHTTP(rec, req)
		checkStatus(t, rec.Code, rec.Body.Bytes())
		checkNoToken(t, path+"?"+rawQuery, rec.Body.Bytes())
		check504(t, rec.Code, timeout)
		if rec.Code == http.StatusOK {
			checkOK(t, req, rec.ResponseRecorder)
		}
	})
}

// checkStatus fails unless code is a status the API documents.
func checkStatus(t *testing.T, code int, body []byte) {
	if !fuzzStatuses[code] {
		t.Fatalf("undocumented status %d: %q", code, body)
	}
}

// checkNoToken fails when the answer shows the token that the URL (the
// only part of the request an answer may echo) did not carry.
func checkNoToken(t *testing.T, target string, body []byte) {
	if bytes.Contains(body, []byte(testToken)) && !strings.Contains(target, testToken) {
		t.Fatalf("answer shows the token: %q", body)
	}
}

// check504 fails on a 504 unless the client asked for a deadline below a
// second: the file origin answers in microseconds, so a longer deadline
// (or none) cannot run out.
func check504(t *testing.T, code int, timeout string) {
	if code != http.StatusGatewayTimeout {
		return
	}
	if ms, err := strconv.ParseInt(timeout, 10, 64); err != nil || ms <= 0 || ms >= 1000 {
		t.Fatalf("504 with %s %q: the deadline cannot have passed", TimeoutHeader, timeout)
	}
}

// checkOK checks a 200 answer to a data request: the bytes of a read, the
// JSON of a list or stat.
func checkOK(t *testing.T, req *http.Request, rec *httptest.ResponseRecorder) {
	switch {
	case strings.HasSuffix(req.URL.Path, "/read"):
		checkRead(t, req.URL.Query(), rec)
	case strings.HasSuffix(req.URL.Path, "/list"):
		var entries []entryJSON
		if err := json.Unmarshal(rec.Body.Bytes(), &entries); err != nil {
			t.Fatalf("list answer is not JSON entries: %v: %q", err, rec.Body.Bytes())
		}
	case strings.HasSuffix(req.URL.Path, "/stat"):
		var e entryJSON
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
			t.Fatalf("stat answer is not a JSON entry: %v: %q", err, rec.Body.Bytes())
		}
	}
}

// checkRead checks a 200 read: len bytes, equal to the file's at off, with
// a matching Content-Length and X-Sluice-Crc32c.
func checkRead(t *testing.T, q url.Values, rec *httptest.ResponseRecorder) {
	body := rec.Body.Bytes()
	off, _ := strconv.ParseInt(q.Get("off"), 10, 64)
	n, _ := strconv.ParseInt(q.Get("len"), 10, 64)
	if int64(len(body)) != n {
		t.Fatalf("read of len=%d answered %d bytes", n, len(body))
	}
	if got := rec.Header().Get("Content-Length"); got != strconv.FormatInt(n, 10) {
		t.Fatalf("read of len=%d has Content-Length %q", n, got)
	}
	if got, want := rec.Header().Get(ChecksumHeader), strconv.FormatUint(uint64(blockcache.Checksum(body)), 16); got != want {
		t.Fatalf("read has %s %q, body's is %q", ChecksumHeader, got, want)
	}
	size, ok := fuzzFiles[q.Get("path")]
	if !ok {
		t.Fatalf("200 read of %q, which is not a file of the origin", q.Get("path"))
	}
	if off+n > int64(size) {
		t.Fatalf("200 read [%d, %d) past the end of %s (%d bytes)", off, off+n, q.Get("path"), size)
	}
	if want := fuzzContent(size)[off : off+n]; !bytes.Equal(body, want) {
		t.Fatalf("read [%d, %d) of %s answered other bytes than the file's", off, off+n, q.Get("path"))
	}
}
