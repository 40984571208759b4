package faultproxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func upstream(t *testing.T, body []byte) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/host" {
			_, _ = io.WriteString(w, r.Host)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func start(t *testing.T, up string, cfg Config) *Proxy {
	p, err := New(up, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// get fetches path with a client that does not reuse connections.
func get(p *Proxy, path string) (int, []byte, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get(p.URL() + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func TestPassThrough(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 10000)
	p := start(t, upstream(t, body).URL, Config{})
	for i := 0; i < 5; i++ {
		code, got, err := get(p, "/obj")
		if err != nil || code != 200 || !bytes.Equal(got, body) {
			t.Fatalf("GET = %d, %d bytes, %v", code, len(got), err)
		}
	}
	if p.Requests() != 5 || p.BodyBytes() != int64(5*len(body)) {
		t.Errorf("Requests %d, BodyBytes %d; want 5, %d", p.Requests(), p.BodyBytes(), 5*len(body))
	}
	// The Host header reaches the upstream unchanged (SigV4 signs it).
	_, host, _ := get(p, "/host")
	if want := strings.TrimPrefix(p.URL(), "http://"); string(host) != want {
		t.Errorf("upstream saw Host %q, want %q", host, want)
	}
}

func TestFaults(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 100000)
	up := upstream(t, body).URL
	tests := []struct {
		name  string
		cfg   Config
		check func(t *testing.T, code int, got []byte, err error)
	}{
		{"fail", Config{FailRate: 1}, func(t *testing.T, code int, got []byte, err error) {
			if err != nil || code != http.StatusServiceUnavailable || !bytes.Contains(got, []byte("<Code>SlowDown</Code>")) {
				t.Errorf("GET = %d %q, %v; want 503 SlowDown", code, got, err)
			}
		}},
		{"reset", Config{ResetRate: 1}, func(t *testing.T, code int, got []byte, err error) {
			if err == nil || len(got) >= len(body) {
				t.Errorf("GET = %d, %d bytes, %v; want a cut-off body", code, len(got), err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, up, tc.cfg)
			for i := 0; i < 10; i++ {
				code, got, err := get(p, "/obj")
				tc.check(t, code, got, err)
			}
		})
	}
}

func TestResetOfEmptyResponse(t *testing.T) {
	p := start(t, upstream(t, nil).URL, Config{ResetRate: 1})
	if code, _, err := get(p, "/empty"); err == nil {
		t.Errorf("GET of an empty body = %d; want a dropped connection", code)
	}
}

func TestSeedIsDeterministic(t *testing.T) {
	up := upstream(t, []byte("hello")).URL
	outcomes := func() string {
		p := start(t, up, Config{FailRate: 0.3, ResetRate: 0.2, Seed: 42})
		var sb strings.Builder
		for i := 0; i < 40; i++ {
			code, _, err := get(p, "/obj")
			switch {
			case err != nil:
				sb.WriteByte('R')
			case code == 503:
				sb.WriteByte('F')
			default:
				sb.WriteByte('.')
			}
		}
		return sb.String()
	}
	a, b := outcomes(), outcomes()
	if a != b {
		t.Errorf("same seed, different faults:\n%s\n%s", a, b)
	}
	if !strings.Contains(a, "R") || !strings.Contains(a, "F") || !strings.Contains(a, ".") {
		t.Errorf("outcomes %s lack a kind", a)
	}
}

func TestBandwidth(t *testing.T) {
	body := bytes.Repeat([]byte("b"), 256<<10)
	p := start(t, upstream(t, body).URL, Config{BandwidthBytesPerSec: 2 << 20})
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ { // 1 MiB in total, shared
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, got, err := get(p, "/obj"); err != nil || len(got) != len(body) {
				errs <- fmt.Errorf("GET: %d bytes, %v", len(got), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// 1 MiB at 2 MiB/s minus the initial burst (100 KiB): ≥ 0.45 s.
	if d := time.Since(start); d < 400*time.Millisecond || d > 3*time.Second {
		t.Errorf("1 MiB at 2 MiB/s took %v", d)
	}
}

func TestDown(t *testing.T) {
	p := start(t, upstream(t, []byte("up")).URL, Config{})
	p.SetDown(true)
	if code, _, err := get(p, "/obj"); err == nil {
		t.Errorf("GET while down = %d; want a connection error", code)
	}
	p.SetDown(false)
	if code, got, err := get(p, "/obj"); err != nil || string(got) != "up" {
		t.Errorf("GET after down = %d %q, %v", code, got, err)
	}
	if p.Requests() != 2 {
		t.Errorf("Requests = %d, want 2", p.Requests())
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		up  string
		cfg Config
	}{
		{"ftp://x", Config{}},
		{"http://127.0.0.1:1", Config{FailRate: 0.7, ResetRate: 0.5}},
		{"http://127.0.0.1:1", Config{FailRate: -1}},
		{"http://127.0.0.1:1", Config{DelayRate: 1.5}},
		{"http://127.0.0.1:1", Config{DelayRate: 0.5, Delay: -time.Second}},
	} {
		if p, err := New(tc.up, tc.cfg); err == nil {
			p.Close()
			t.Errorf("New(%q, %+v) succeeded", tc.up, tc.cfg)
		}
	}
}
