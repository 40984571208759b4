package fusefs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/faultproxy"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// s3ViaProxy serves files from a real versitygw behind a fault proxy.
func s3ViaProxy(t *testing.T, files map[string][]byte, cfg faultproxy.Config) (*s3server.Server, *faultproxy.Proxy, source.Source) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	for p, data := range files {
		srv.Put(t, "data", p, data)
	}
	proxy, err := faultproxy.New(srv.Endpoint, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	src, err := source.Parse("s3://data?pathStyle=true&endpoint="+proxy.URL(),
		source.Options{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	return srv, proxy, source.WithRetry(src, source.RetryPolicy{Attempts: 8, BaseDelay: 10 * time.Millisecond,
		MaxDelay: 200 * time.Millisecond, TTFB: 10 * time.Second})
}

func TestFlakyOriginNeverReachesReaders(t *testing.T) {
	files := map[string][]byte{}
	for _, n := range []string{"a", "b", "c"} {
		files[n] = testutil.RandBytes(8*testBlock+5, uint64(n[0]))
	}
	_, proxy, src := s3ViaProxy(t, files, faultproxy.Config{FailRate: 0.10, ResetRate: 0.05, Seed: 1})
	m := mountSource(t, src, mountConfig{blockSize: testBlock})
	for p, want := range files {
		got, err := os.ReadFile(filepath.Join(m.dir, p))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: err %v, equal %v", p, err, bytes.Equal(got, want))
		}
	}
	if proxy.Requests() == 0 {
		t.Fatal("the proxy saw no requests")
	}
}

func TestOriginDown(t *testing.T) {
	files := map[string][]byte{"cached": testutil.RandBytes(3*testBlock, 1), "uncached": testutil.RandBytes(3*testBlock, 2)}
	_, proxy, src := s3ViaProxy(t, files, faultproxy.Config{})
	m := mountSource(t, src, mountConfig{blockSize: testBlock, noReadahead: true})
	if got, err := os.ReadFile(filepath.Join(m.dir, "cached")); err != nil || !bytes.Equal(got, files["cached"]) {
		t.Fatalf("warm-up: %v", err)
	}
	if _, err := os.Stat(filepath.Join(m.dir, "uncached")); err != nil {
		t.Fatal(err)
	}
	proxy.SetDown(true)
	got, err := os.ReadFile(filepath.Join(m.dir, "cached"))
	if err != nil || !bytes.Equal(got, files["cached"]) {
		t.Fatalf("cached file with the origin down: err %v", err)
	}
	start := time.Now()
	_, err = os.ReadFile(filepath.Join(m.dir, "uncached"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("uncached read with the origin down: got %v, want EIO", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("EIO took %s; the retry budget should end sooner", d)
	}
	proxy.SetDown(false)
	if got, err := os.ReadFile(filepath.Join(m.dir, "uncached")); err != nil || !bytes.Equal(got, files["uncached"]) {
		t.Fatalf("after the origin came back: err %v", err)
	}
}

func TestOverwrittenObjectIsSeenAfterTTL(t *testing.T) {
	srv := s3server.Start(t)
	srv.CreateBucket(t, "data")
	v1, v2 := bytes.Repeat([]byte("1"), 3*testBlock), bytes.Repeat([]byte("2"), 2*testBlock+9)
	srv.Put(t, "data", "obj", v1)
	src, err := source.Parse("s3://data?pathStyle=true&endpoint="+srv.Endpoint,
		source.Options{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	const ttl = time.Second
	m := mountSource(t, source.WithRetry(src, source.DefaultRetryPolicy()), mountConfig{blockSize: testBlock, ttl: ttl})
	p := filepath.Join(m.dir, "obj")
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("v1: %v", err)
	}
	srv.Put(t, "data", "obj", v2)
	time.Sleep(ttl + 200*time.Millisecond)
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("after the TTL: err %v, got %d bytes starting %q, want v2 (%d bytes)", err, len(got), got[:min(len(got), 4)], len(v2))
	}
}
