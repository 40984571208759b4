package pki

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

func TestIssueAndDue(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ca, err := NewCA("test", now)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatalf("LoadCA of a new CA: %v", err)
	}
	other, err := NewCA("other", now)
	if err != nil {
		t.Fatal(err)
	}
	hosts := []string{"w.ns.svc", "*.w.ns.svc.cluster.local", "10.0.0.1"}
	certPEM, keyPEM, err := loaded.Issue(hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("issued pair: %v", err)
	}
	pool, err := PoolOf(ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := ParseCerts(certPEM)
	for _, name := range []string{"w.ns.svc", "w-0.w.ns.svc.cluster.local", "10.0.0.1"} {
		if _, err := cert[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: name, CurrentTime: now}); err != nil {
			t.Errorf("verify %s: %v", name, err)
		}
	}
	for _, tc := range []struct {
		name  string
		cert  []byte
		ca    *CA
		hosts []string
		at    time.Time
		due   bool
	}{
		{"fresh", certPEM, ca, hosts, now, false},
		{"half its life", certPEM, ca, hosts, now.Add(CertLifetime / 2), false},
		{"past two thirds", certPEM, ca, hosts, now.Add(CertLifetime*2/3 + time.Hour), true},
		{"another CA", certPEM, other, hosts, now, true},
		{"a new host", certPEM, ca, append(hosts, "x.other.svc"), now, true},
		{"garbage", []byte("not a certificate"), ca, hosts, now, true},
		{"CA itself, fresh", ca.CertPEM, nil, nil, now.Add(365 * 24 * time.Hour), false},
		{"CA itself, old", ca.CertPEM, nil, nil, now.Add(CALifetime*2/3 + time.Hour), true},
	} {
		if got := Due(tc.cert, tc.ca, tc.hosts, tc.at); got != tc.due {
			t.Errorf("%s: Due = %v, want %v", tc.name, got, tc.due)
		}
	}
}

// TestBundleKeepsOldCAUntilExpiry: a rotation publishes new + old; an
// expired old CA leaves the bundle.
func TestBundleKeepsOldCAUntilExpiry(t *testing.T) {
	now := time.Now()
	old, _ := NewCA("old", now.Add(-CALifetime*3/4))
	next, _ := NewCA("next", now)
	b := Bundle(next, old.CertPEM, now)
	certs, err := ParseCerts(b)
	if err != nil || len(certs) != 2 || !certs[0].Equal(next.Cert) || !certs[1].Equal(old.Cert) {
		t.Fatalf("bundle after rotation: %d certificates (%v), want next then old", len(certs), err)
	}
	later := Bundle(next, b, old.Cert.NotAfter.Add(time.Hour))
	if certs, _ := ParseCerts(later); len(certs) != 1 || !certs[0].Equal(next.Cert) {
		t.Fatalf("bundle once the old CA expired: %d certificates, want the new one alone", len(certs))
	}
	if again := Bundle(next, later, now); string(again) != string(next.CertPEM) {
		t.Fatal("the current CA appears twice in the bundle")
	}
}
