package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/internal/pki"
	"github.com/sluice-dev/sluice/internal/testutil"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	return getWith(t, http.DefaultClient, url, token)
}

func getWith(t *testing.T, c *http.Client, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestSecretsNeverLeak runs a cache worker, a mount and a fetch at -v=10
// with origin credentials and a worker token set, reads through each, asks
// the worker with a wrong token, and scans every log line, every error
// answer and every metric for the secrets.
func TestSecretsNeverLeak(t *testing.T) {
	testutil.RequireRootFUSE(t)
	bin := testutil.SluiceBin(t)
	o := startFetchOrigin(t, 2, 3<<20, 0)
	secret := strings.TrimPrefix(o.creds[1], "AWS_SECRET_ACCESS_KEY=")
	const token, wrong = "worker-token-5ecr3t", "wrong-token-5ecr3t"
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte(token+"\n"), 0o600)
	wrongFile := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrongFile, []byte(wrong+"\n"), 0o600)
	origin := "s3://data/d?pathStyle=true&endpoint=" + o.proxy.URL()
	verbose := "--v=10"

	workerMetrics := freeAddr(t)
	serveTLS, verifyTLS := testutil.WorkerTLS(t)
	w := testutil.StartProc(t, bin, o.creds, "listening on ", slices.Concat([]string{"cache-worker", origin, verbose, "--listen", "127.0.0.1:0",
		"--token-file", tok, "--cache-dir", "", "--block-size", "1Mi", "--metrics-addr", workerMetrics}, serveTLS)...)
	wurl := "https://" + w.Line[strings.LastIndex(w.Line, "listening on ")+len("listening on "):]

	mountMetrics := freeAddr(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	m := startMount(t, bin, o.creds, slices.Concat([]string{origin, dir, verbose, "--workers", wurl, "--worker-token-file", tok,
		"--cache-dir", t.TempDir(), "--block-size", "1Mi", "--metrics-addr", mountMetrics}, verifyTLS)...)
	o.check(t, dir)

	copyDir := filepath.Join(t.TempDir(), "copy")
	fetchOut, code := runFetch(t, bin, o.creds, slices.Concat([]string{origin, copyDir, verbose, "--workers", wurl, "--worker-token-file", tok}, verifyTLS)...)
	if code != 0 {
		t.Fatalf("fetch: exit %d: %s", code, fetchOut)
	}
	o.check(t, copyDir)
	refused, code := runFetch(t, bin, nil, slices.Concat([]string{origin, filepath.Join(t.TempDir(), "refused"), verbose, "--workers", wurl,
		"--worker-token-file", wrongFile, "--origin-fallback=false", "--probe-timeout", "2s"}, verifyTLS)...)
	if code == 0 {
		t.Fatal("a fetch with a wrong token succeeded")
	}
	// The worker's own answers to bad requests, over TLS.
	verify, err := pki.ClientConfigFile(verifyTLS[1])
	if err != nil {
		t.Fatal(err)
	}
	tc := &http.Client{Transport: &http.Transport{TLSClientConfig: verify}}
	_, wrongAnswer := getWith(t, tc, wurl+"/v1/datasets/default/list?path=", wrong)
	_, badAnswer := getWith(t, tc, wurl+"/v1/datasets/default/read?path=d/part-0.bin&off=x&len=1&version=v", token)

	_, wm := get(t, "http://"+workerMetrics+"/metrics", "")
	_, mm := get(t, "http://"+mountMetrics+"/metrics", "")
	m.stop(t, 15) // SIGTERM: the mount logs its shutdown too
	texts := map[string]string{
		"worker log": w.Stderr.String(), "mount log": m.stderr.String(), "fetch output": fetchOut,
		"refused fetch output": refused, "worker answer to a wrong token": wrongAnswer,
		"worker answer to a bad request": badAnswer, "worker metrics": wm, "mount metrics": mm,
	}
	for what, text := range texts {
		if len(text) == 0 {
			t.Errorf("%s is empty: the test saw nothing", what)
		}
		text = testutil.Readable(text)
		for name, s := range map[string]string{"the origin secret key": secret, "the worker token": token, "the wrong token": wrong} {
			if strings.Contains(text, s) {
				i := strings.Index(text, s)
				t.Errorf("%s contains %s: …%s…", what, name, text[max(0, i-80):min(len(text), i+len(s)+20)])
			}
		}
	}
	t.Logf("scanned %s", func() string {
		var parts []string
		for what, text := range texts {
			parts = append(parts, fmt.Sprintf("%s (%d bytes)", what, len(text)))
		}
		return strings.Join(parts, ", ")
	}())
}
