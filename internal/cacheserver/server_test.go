package cacheserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
)

func TestBadRequests(t *testing.T) {
	o := startOrigin(t, 1, 1<<20)
	w := startWorker(t, o.source(t))
	e, err := o.source(t).Stat(context.Background(), "shard-00.bin")
	if err != nil {
		t.Fatal(err)
	}
	good := url.Values{"path": {"shard-00.bin"}, "version": {e.Version}, "off": {"0"}, "len": {"10"}}
	with := func(k, v string) string {
		q := url.Values{}
		for kk, vv := range good {
			q[kk] = vv
		}
		q.Set(k, v)
		return q.Encode()
	}
	tests := []struct {
		name   string
		path   string
		token  string
		status int
		reason string
	}{
		{"good request", "/v1/datasets/default/read?" + good.Encode(), testToken, 200, ""},
		{"missing token", "/v1/datasets/default/read?" + good.Encode(), "", 401, "missing bearer token"},
		{"wrong token", "/v1/datasets/default/read?" + good.Encode(), "nope", 401, "wrong token"},
		{"unknown dataset", "/v1/datasets/other/read?" + good.Encode(), testToken, 404, `unknown dataset "other"`},
		{"unknown operation", "/v1/datasets/default/write?" + good.Encode(), testToken, 404, "unknown operation"},
		{"negative offset", "/v1/datasets/default/read?" + with("off", "-4096"), testToken, 400, "off >= 0"},
		{"huge offset", "/v1/datasets/default/read?" + with("off", "9223372036854775000"), testToken, 416, "past the end"},
		{"huge length", "/v1/datasets/default/read?" + with("len", "1099511627776"), testToken, 400, "len <="},
		{"non-numeric", "/v1/datasets/default/read?" + with("off", "x"), testToken, 400, "integers"},
		{"path traversal", "/v1/datasets/default/read?" + with("path", "../../etc/passwd"), testToken, 400, `".." element`},
		{"absolute path", "/v1/datasets/default/stat?path=%2Fetc%2Fpasswd", testToken, 400, "absolute"},
		{"missing object", "/v1/datasets/default/read?" + with("path", "nope.bin"), testToken, 404, "nope.bin"},
		{"stale version", "/v1/datasets/default/read?" + with("version", "abc"), testToken, 412, "version"},
		{"directory read", "/v1/datasets/default/list?path=nope", testToken, 404, ""},
		{"health without token", "/healthz", "", 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, w.url+tc.path, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.status)
			}
			if !strings.Contains(string(body), tc.reason) {
				t.Errorf("body %q does not give the reason %q", body, tc.reason)
			}
		})
	}
}

func TestManyConnectionsGetAnswersNotPanics(t *testing.T) {
	o := startOrigin(t, 1, 1<<20)
	src := o.source(t)
	w := startWorker(t, src)
	e, err := src.Stat(context.Background(), "shard-00.bin")
	if err != nil {
		t.Fatal(err)
	}
	w.api.slots = make(chan struct{}, 64) // a small limit, so some requests see 429 (busy)
	q := url.Values{"path": {"shard-00.bin"}, "version": {e.Version}, "off": {"0"}, "len": {"65536"}}.Encode()
	const conns = 10000
	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: -1, DisableKeepAlives: true}
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4000) // 4,000 open at once: client and server share this process's 20,000-fd limit
	for i := 0; i < conns; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, _ := http.NewRequest(http.MethodGet, w.url+"/v1/datasets/default/read?"+q, nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := client.Do(req)
			code := -1
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				code = resp.StatusCode
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("status codes over %d connections: %v", conns, codes)
	if codes[200] == 0 {
		t.Fatal("no request succeeded")
	}
	for code, n := range codes {
		if code != 200 && code != 429 && n > conns/100 {
			t.Errorf("%d requests ended with %d; want 200 or 429", n, code)
		}
	}
	// The worker still answers afterwards.
	resp, err := http.Get(w.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz after the storm: %v", err)
	}
	resp.Body.Close()
}

func TestDrainRefusesNewRequests(t *testing.T) {
	o := startOrigin(t, 1, 1<<20)
	w := startWorker(t, o.source(t))
	_, s, _ := newClient(t, []string{w.url}, nil)
	if _, err := s.List(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	w.api.Drain()
	resp, err := http.Get(w.url + "/readyz")
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("readyz while draining: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s.List(ctx, ""); err == nil || errors.Is(err, source.ErrNotFound) {
		t.Fatalf("list while draining: %v, want a failure", err)
	}
}

// TestErrorAnswersShowDatasetPaths: a worker over a file origin answers a
// missing path with the dataset's path, never with where it keeps the
// files.
func TestErrorAnswersShowDatasetPaths(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "there"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := source.Parse("file://"+root, source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, src)
	for _, q := range []string{"stat?path=missing/file", "list?path=nodir", "read?path=missing&off=0&len=1&version=v"} {
		req, _ := http.NewRequest(http.MethodGet, w.url+"/v1/datasets/default/"+q, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || strings.Contains(string(body), root) || !strings.Contains(string(body), `"/`) {
			t.Errorf("%s: %d %q; want 404 naming the dataset path, not %s", q, resp.StatusCode, body, root)
		}
	}
}
