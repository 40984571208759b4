package testutil

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/pki"
)

// WorkerTLS makes a CA and a serving certificate for 127.0.0.1 and
// localhost in a temporary directory. It returns the flags that make
// `sluice cache-worker` serve TLS with it and the flags that make a client
// verify it.
func WorkerTLS(t testing.TB) (server, client []string) {
	t.Helper()
	ca, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1", "localhost"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{"ca.crt": ca.CertPEM, "tls.crt": certPEM, "tls.key": keyPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return []string{"--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key")},
		[]string{"--workers-ca", filepath.Join(dir, "ca.crt")}
}
