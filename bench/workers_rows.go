package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/internal/pki"
)

// workers measures reads through a `sluice cache-worker` that holds the
// data (one pass warms it first), by a fresh `sluice mount` without a disk
// tier or origin fallback: the cost of the network hop, plain HTTP or TLS
// (useTLS). The worker's and the client's CPU time of the measured pass
// are reported per GiB; with plain set, the TLS row also reports its
// CPU-seconds per GiB over the plain row's.
func (r *runner) workers(ctx context.Context, row *Row, useTLS bool, plain *Row) error {
	dir := filepath.Join(r.work, "worker-cache") // shared: the second worker starts warm on disk
	tok := filepath.Join(r.work, "worker-token")
	if err := os.WriteFile(tok, []byte("bench-token\n"), 0o600); err != nil {
		return err
	}
	args := append([]string{"cache-worker", "s3://" + Bucket, "--s3-endpoint", r.gw.Endpoint, "--listen", "127.0.0.1:0",
		"--token-file", tok, "--cache-dir", dir, "--cache-memory", "512Mi"}, sluiceFlags(r.o)...)
	clientTLS, scheme := []string{"--insecure-workers"}, "http://"
	if useTLS {
		server, client, err := r.workerCerts()
		if err != nil {
			return err
		}
		args, clientTLS, scheme = append(args, server...), client, "https://"
	}
	env := []string{"AWS_ACCESS_KEY_ID=" + r.gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + r.gw.SecretKey}
	w, err := startServing(ctx, "cache-worker "+row.Key, dir, r.o.Sluice, args, env, "listening on ")
	if err != nil {
		return err
	}
	r.cl.add(w.stop)
	defer w.stop()
	_, addr, _ := strings.Cut(w.out.tail(), "listening on ")
	addr, _, _ = strings.Cut(addr, "\n")
	url := scheme + strings.TrimSpace(addr)

	pass := func(name string) (*child, [2]Measurement, error) {
		mnt := filepath.Join(r.work, "mnt-"+row.Key)
		margs := append([]string{"mount", "s3://" + Bucket, mnt, "--s3-endpoint", r.gw.Endpoint, "--workers", url,
			"--worker-token-file", tok, "--origin-fallback=false", "--cache-dir", ""}, clientTLS...)
		c, err := startChild("sluice mount "+name, mnt, r.o.Sluice, margs, []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="}, "serving")
		if err != nil {
			return nil, [2]Measurement{}, err
		}
		r.cl.add(c.stop)
		defer c.stop()
		if err := c.waitServing(ctx, mountTimeout); err != nil {
			return nil, [2]Measurement{}, err
		}
		m, err := r.readBoth(ctx, mnt)
		if err != nil {
			return nil, m, fmt.Errorf("%w; sluice output:\n%s\nworker output:\n%s", err, c.out.tail(), w.out.tail())
		}
		return c, m, c.stop()
	}
	if _, _, err := pass("warming " + row.Key); err != nil {
		return err
	}
	before, err := w.cpuNow()
	if err != nil {
		return err
	}
	c, m, err := pass(row.Key)
	if err != nil {
		return err
	}
	after, err := w.cpuNow()
	if err != nil {
		return err
	}
	setBoth(row, m)
	gib := float64(m[0].Bytes+m[1].Bytes) / (1 << 30)
	client, worker := c.cpuSeconds(), after-before
	row.Settings = "sluice " + strings.Join(args, " ")
	row.Extra = map[string]any{"clientCPUSeconds": client, "workerCPUSeconds": worker,
		"clientCPUPerGiB": client / gib, "workerCPUPerGiB": worker / gib}
	row.Notes = append(row.Notes, fmt.Sprintf("CPU-seconds per GiB: client %.2f, worker %.2f (%.1f GiB read)", client/gib, worker/gib, gib))
	row.CPUPerGiB = client / gib
	row.measured(cpuLimit, client/gib)
	row.measured("worker CPU", worker/gib)
	if plain != nil && plain.Extra != nil {
		pc, _ := plain.Extra["clientCPUPerGiB"].(float64)
		pw, _ := plain.Extra["workerCPUPerGiB"].(float64)
		over := client/gib + worker/gib - pc - pw
		row.Extra["cpuPerGiBOverPlain"] = over
		row.Notes = append(row.Notes, fmt.Sprintf("TLS costs %+.2f CPU-seconds per GiB (client + worker) over plain HTTP; target ≤ +0.30", over))
	}
	return nil
}

// workerCerts writes a CA and a certificate for 127.0.0.1 into the work
// directory and returns the worker's and the client's TLS flags.
func (r *runner) workerCerts() (server, client []string, err error) {
	ca, err := pki.NewCA("sluice-bench", time.Now())
	if err != nil {
		return nil, nil, err
	}
	certPEM, keyPEM, err := ca.Issue([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Join(r.work, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	for name, b := range map[string][]byte{"ca.crt": ca.CertPEM, "tls.crt": certPEM, "tls.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, nil, err
		}
	}
	return []string{"--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key")},
		[]string{"--workers-ca", filepath.Join(dir, "ca.crt")}, nil
}

// cpuNow is the user and system CPU time of a running child, from
// /proc/PID/stat (clock ticks of 1/100 s, as Linux reports them there).
func (c *child) cpuNow() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", c.cmd.Process.Pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", c.cmd.Process.Pid, len(f))
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", c.cmd.Process.Pid, f[11], f[12])
	}
	return (utime + stime) / 100, nil
}
