package pki

import (
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// BenchmarkStream is the floor of what TLS costs here: one connection on
// loopback, a server writing 1 MiB chunks and a client reading them, plain
// TCP against TLS 1.3 with a certificate of this package, both ends in
// this process. It reports CPU-seconds per GiB (both ends together):
//
//	go test -run '^$' -bench Stream ./internal/pki
func BenchmarkStream(b *testing.B) {
	for _, useTLS := range []bool{false, true} {
		name := "plain"
		if useTLS {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) {
			const total = 1 << 30
			client, server := streamPair(b, useTLS)
			chunk := make([]byte, 1<<20)
			go func() {
				for i := 0; i < b.N*total/len(chunk); i++ {
					if _, err := server.Write(chunk); err != nil {
						return
					}
				}
				server.Close()
			}()
			b.SetBytes(total)
			b.ResetTimer()
			c0 := cpuSeconds()
			n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{client}, make([]byte, 1<<20))
			if err != nil || n != int64(b.N)*total {
				b.Fatalf("read %d bytes (%v), want %d", n, err, b.N*total)
			}
			b.ReportMetric((cpuSeconds()-c0)/float64(b.N), "CPU-s/GiB")
		})
	}
}

func streamPair(b *testing.B, useTLS bool) (client, server net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	server = <-accepted
	if !useTLS {
		return client, server
	}
	ca, err := NewCA("bench", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	cert, _ := tls.X509KeyPair(certPEM, keyPEM)
	pool, _ := PoolOf(ca.CertPEM)
	return tls.Client(client, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}),
		tls.Server(server, &tls.Config{Certificates: []tls.Certificate{cert}})
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
