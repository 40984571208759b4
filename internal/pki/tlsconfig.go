package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
)

// Roots returns the CA pool to verify a server against at the time of the
// handshake.
type Roots func() (*x509.CertPool, error)

// FileRoots reads the PEM bundle at path, and again whenever its size or
// modification time changes (the kubelet replaces a mounted ConfigMap's
// files when the controller rotates its CA). A bundle that no longer
// parses keeps the last good one.
func FileRoots(path string) (Roots, error) {
	r := &fileRoots{path: path}
	if _, err := r.pool(); err != nil {
		return nil, err
	}
	return r.pool, nil
}

type fileRoots struct {
	path string
	mu   sync.Mutex
	size int64
	mod  time.Time
	cur  *x509.CertPool
}

func (r *fileRoots) pool() (*x509.CertPool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := os.Stat(r.path)
	if err != nil {
		if r.cur != nil {
			return r.cur, nil
		}
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	if r.cur != nil && st.Size() == r.size && st.ModTime().Equal(r.mod) {
		return r.cur, nil
	}
	data, err := os.ReadFile(r.path)
	if err == nil {
		var pool *x509.CertPool
		if pool, err = PoolOf(data); err == nil {
			r.cur, r.size, r.mod = pool, st.Size(), st.ModTime()
			return pool, nil
		}
	}
	if r.cur != nil {
		klog.InfoS("CA bundle unreadable; keeping the previous one", "path", r.path, "err", err)
		return r.cur, nil
	}
	return nil, fmt.Errorf("CA bundle %s: %w", r.path, err)
}

// PoolOf parses a PEM bundle into a pool.
func PoolOf(bundle []byte) (*x509.CertPool, error) {
	certs, err := ParseCerts(bundle)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// ClientConfig is a client's TLS configuration that verifies servers
// against roots, read at each full handshake (so a rotated bundle counts
// without a restart), and resumes sessions so that a burst of connections
// to one worker pays for one full handshake.
//
// Go verifies a chain against a fixed pool only; to read the pool per
// handshake, the standard verification is switched off and done in
// VerifyConnection instead, with the same checks (chain to a root, host
// name, server usage).
func ClientConfig(roots Roots) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified in VerifyConnection against roots
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: the server sent no certificate")
			}
			pool, err := roots()
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
				DNSName: cs.ServerName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if err != nil {
				return fmt.Errorf("tls: server %q: %w", cs.ServerName, err)
			}
			return nil
		},
		ClientSessionCache: tls.NewLRUClientSessionCache(256),
	}
}

// ClientConfigFile is ClientConfig with the roots of the PEM bundle at
// path (FileRoots).
func ClientConfigFile(path string) (*tls.Config, error) {
	roots, err := FileRoots(path)
	if err != nil {
		return nil, err
	}
	return ClientConfig(roots), nil
}

// ServerConfig serves the PEM certificate and key at certFile and keyFile,
// read again when they change (a mounted Secret the controller renews),
// until ctx is done.
func ServerConfig(ctx context.Context, certFile, keyFile string) (*tls.Config, error) {
	w, err := certwatcher.New(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s / key %s: %w", certFile, keyFile, err)
	}
	go func() {
		if err := w.Start(ctx); err != nil {
			klog.ErrorS(err, "Watching the TLS certificate failed; serving the one read at start", "cert", certFile)
		}
	}()
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: w.GetCertificate}, nil
}

// StaticServerConfig serves the certificate that get returns at each
// handshake (the controller's in-memory one).
func StaticServerConfig(get func() (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return get() }}
}
