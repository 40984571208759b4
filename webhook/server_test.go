package webhook

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with the given
// serial to dir/tls.crt and dir/tls.key.
func writeCert(t *testing.T, dir string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "sluice-webhook"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// Write both, then rename: the watcher must never see half a pair.
	for name, block := range map[string]*pem.Block{"tls.key": {Type: "EC PRIVATE KEY", Bytes: kder}, "tls.crt": {Type: "CERTIFICATE", Bytes: der}} {
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHTTPSServer serves the real handler over HTTPS from --cert-dir and
// checks that a rotated certificate is served without a restart.
func TestHTTPSServer(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	o := &Options{Listen: addr, CertDir: dir}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := o.webhookServer()
	srv.Register(Path, newTestWebhook(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Start(ctx) }()

	insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	serial := func() int64 {
		resp, err := insecure.Post("https://"+addr+Path, "application/json",
			bytes.NewReader(review(t, podKind, pod([]corev1.Volume{srcVol}, label("true")))))
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		var ar admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&ar); err != nil || ar.Response == nil || !ar.Response.Allowed || len(ar.Response.Patch) == 0 {
			t.Fatalf("answer over HTTPS: %v %+v", err, ar.Response)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	waitSerial := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for got := serial(); got != want; got = serial() {
			if time.Now().After(deadline) {
				t.Fatalf("served certificate serial %d, want %d", got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitSerial(1)
	start := time.Now()
	writeCert(t, dir, 2)
	waitSerial(2)
	t.Logf("rotated certificate served %s after it was written", time.Since(start).Round(time.Millisecond))
}

func TestOptionsValidate(t *testing.T) {
	certs := t.TempDir()
	writeCert(t, certs, 1)
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"defaults", Options{Listen: ":9443", CertDir: certs}, ""},
		{"bad listen", Options{Listen: "9443", CertDir: certs}, "--listen"},
		{"bad port", Options{Listen: ":99999", CertDir: certs}, "want 1..65535"},
		{"no certs", Options{Listen: ":9443", CertDir: t.TempDir()}, "--cert-dir"},
		{"missing config", Options{Listen: ":9443", CertDir: certs, ConfigFile: "/nonexistent"}, "--config"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !bytes.Contains([]byte(err.Error()), []byte(tc.want))) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
			if err == nil && tc.o.Config == nil {
				t.Fatal("Validate did not load a configuration")
			}
		})
	}
}
