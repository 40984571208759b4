// Package pki is sluice's small certificate authority: the controller
// keeps a CA, issues the cache workers and its own heartbeat endpoint
// serving certificates, and publishes the CA bundle that clients verify
// them against (see tlsconfig.go for the clients' and servers' side).
//
// Keys are ECDSA P-256. A certificate is due for renewal once two thirds of
// its lifetime have passed; a CA is replaced then, and the bundle keeps the
// old CA beside the new one until the old one expires, so clients that read
// the bundle before the rotation keep verifying certificates of either.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Lifetimes of what the CA makes.
const (
	CALifetime   = 5 * 365 * 24 * time.Hour
	CertLifetime = 90 * 24 * time.Hour
	// backdate absorbs clock skew between the controller and clients.
	backdate = 5 * time.Minute
)

// CA is a certificate authority: its certificate and key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM and KeyPEM are the stored forms (PEM).
	CertPEM, KeyPEM []byte
}

// NewCA makes a self-signed CA named name, valid for CALifetime from now.
func NewCA(name string, now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der) // just made: cannot fail
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// LoadCA parses a CA's PEM certificate and key.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 || !certs[0].IsCA {
		return nil, errors.New("CA certificate: want exactly one CA certificate")
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("CA key: no PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("CA key: not a signing key")
	}
	return &CA{Cert: certs[0], Key: signer, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Issue makes a serving certificate for hosts (DNS names; IP addresses are
// put in IPAddresses), valid for CertLifetime from now, usable by servers
// and, for mutual TLS, by clients. It returns PEM certificate and key.
func (ca *CA) Issue(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("a certificate needs at least one host name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(CertLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// Due reports whether the PEM certificate certPEM must be replaced at now:
// it does not parse, two thirds of its lifetime have passed, or (with a
// non-nil ca) ca did not sign it or it does not name every one of hosts.
func Due(certPEM []byte, ca *CA, hosts []string, now time.Time) bool {
	certs, err := ParseCerts(certPEM)
	if err != nil || len(certs) == 0 {
		return true
	}
	c := certs[0]
	life := c.NotAfter.Sub(c.NotBefore)
	if now.After(c.NotBefore.Add(life * 2 / 3)) {
		return true
	}
	if ca != nil && c.CheckSignatureFrom(ca.Cert) != nil {
		return true
	}
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return true
		}
	}
	return false
}

// Bundle is the CA bundle to publish: the current CA and, while they are
// valid, the CAs it replaced (from the previous bundle prev).
func Bundle(current *CA, prev []byte, now time.Time) []byte {
	var b bytes.Buffer
	b.Write(current.CertPEM)
	old, _ := ParseCerts(prev) // a bad previous bundle is replaced
	for _, c := range old {
		if c.Equal(current.Cert) || now.After(c.NotAfter) {
			continue
		}
		b.Write(encodeCert(c.Raw))
	}
	return b.Bytes()
}

// ParseCerts parses every CERTIFICATE block of a PEM bundle.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n, nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
