package cacheserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/pki"
)

// testCA makes a CA and a server configuration for hosts signed by it,
// counting full and resumed handshakes.
type testCA struct {
	ca            *pki.CA
	full, resumed atomic.Int64
	bundleFile    string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	ca, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := &testCA{ca: ca, bundleFile: filepath.Join(t.TempDir(), "ca.crt")}
	writeBundle(t, c.bundleFile, ca.CertPEM)
	return c
}

func writeBundle(t *testing.T, path string, pem ...[]byte) {
	t.Helper()
	// A new file renamed over the old one, as the kubelet updates a
	// mounted ConfigMap.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, bytes.Join(pem, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func (c *testCA) server(t *testing.T, hosts ...string) *tls.Config {
	t.Helper()
	certPEM, keyPEM, err := c.ca.Issue(hosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, VerifyConnection: func(cs tls.ConnectionState) error {
		if cs.DidResume {
			c.resumed.Add(1)
		} else {
			c.full.Add(1)
		}
		return nil
	}}
}

func (c *testCA) client(t *testing.T) *tls.Config {
	t.Helper()
	tc, err := pki.ClientConfigFile(c.bundleFile)
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// TestWorkersOverTLS reads a dataset from workers that serve TLS: the
// bytes arrive when the client trusts the workers' CA and the name
// matches, and nothing is read (an error that says why) otherwise.
func TestWorkersOverTLS(t *testing.T) {
	o := startOrigin(t, 3, 1<<20+17)
	for _, tc := range []struct {
		name string
		// serve is the worker's names; clientCA the CA the client trusts
		// (nil: the worker's); dns reaches the worker as localhost:port.
		serve    []string
		otherCA  bool
		dns      bool
		wantFail string
	}{
		{name: "verified by address", serve: []string{"127.0.0.1"}},
		{name: "verified by the Service name", serve: []string{"localhost"}, dns: true},
		{name: "another CA", serve: []string{"127.0.0.1"}, otherCA: true, wantFail: "unknown authority"},
		{name: "another name", serve: []string{"workers.elsewhere.svc"}, dns: true, wantFail: "not localhost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newTestCA(t)
			w := startWorkerTLS(t, o.source(t), ca.server(t, tc.serve...))
			trusted := ca
			if tc.otherCA {
				trusted = newTestCA(t)
			}
			pc := PoolConfig{TokenFile: tokenFile(t, testToken), TLS: trusted.client(t), Timeout: 3 * time.Second, Budget: 3 * time.Second}
			if tc.dns {
				_, port, _ := strings.Cut(strings.TrimPrefix(w.url, "https://"), ":")
				pc.DNS = "localhost:" + port
			} else {
				pc.URLs = []string{w.url}
			}
			c, s, _ := newClientWith(t, pc, nil)
			err := readDataset(context.Background(), c, s, o, nil)
			switch {
			case tc.wantFail == "" && err != nil:
				t.Fatalf("read over TLS: %v", err)
			case tc.wantFail != "" && (err == nil || !strings.Contains(err.Error(), tc.wantFail)):
				t.Fatalf("read: %v, want an error with %q", err, tc.wantFail)
			case tc.wantFail == "" && ca.full.Load() > 4:
				// Keep-alive: a few connections for the whole dataset.
				t.Errorf("%d full handshakes for %d bytes; want a few connections kept alive", ca.full.Load(), o.total)
			}
		})
	}
}

// TestTokenOnlyOverTLS: a pool that holds a token refuses plain http://
// workers unless told the network is trusted.
func TestTokenOnlyOverTLS(t *testing.T) {
	tok := tokenFile(t, testToken)
	ca := newTestCA(t)
	for _, tc := range []struct {
		name    string
		pc      PoolConfig
		wantErr string
	}{
		{"http URL", PoolConfig{URLs: []string{"http://127.0.0.1:1"}, TokenFile: tok}, "--insecure-workers"},
		{"DNS without a CA", PoolConfig{DNS: "localhost:1", TokenFile: tok}, "--workers-ca"},
		{"https without a CA", PoolConfig{URLs: []string{"https://127.0.0.1:1"}}, "--workers-ca"},
		{"http URL, insecure", PoolConfig{URLs: []string{"http://127.0.0.1:1"}, TokenFile: tok, Insecure: true}, ""},
		{"http URL, no token", PoolConfig{URLs: []string{"http://127.0.0.1:1"}}, ""},
		{"DNS with a CA", PoolConfig{DNS: "localhost:1", TokenFile: tok, TLS: ca.client(t)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewPool(context.Background(), tc.pc)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("NewPool: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("NewPool: %v, want an error naming %s", err, tc.wantErr)
			}
		})
	}
}

// TestRotatedBundle: a worker whose certificate comes from a new CA is
// trusted as soon as the bundle file holds that CA, without a restart.
func TestRotatedBundle(t *testing.T) {
	o := startOrigin(t, 1, 1<<20)
	old, next := newTestCA(t), newTestCA(t)
	w := startWorkerTLS(t, o.source(t), next.server(t, "127.0.0.1"))
	c, s, _ := newClientWith(t, PoolConfig{URLs: []string{w.url}, TokenFile: tokenFile(t, testToken), TLS: old.client(t),
		Timeout: 2 * time.Second, Budget: 2 * time.Second}, nil)
	if err := readDataset(context.Background(), c, s, o, nil); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("before the bundle has the new CA: %v, want unknown authority", err)
	}
	writeBundle(t, old.bundleFile, next.ca.CertPEM, old.ca.CertPEM)
	// The file's size changed: the next handshake reads it. The failed
	// handshakes above marked the worker failed; the client tries it again
	// once its backoff (up to 5 s) ends, so reads are retried until then.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := readDataset(context.Background(), c, s, o, nil)
		if err == nil {
			break
		}
		if strings.Contains(err.Error(), "unknown authority") || time.Now().After(deadline) {
			t.Fatalf("after the bundle has the new CA: %v", err)
		}
	}
}
