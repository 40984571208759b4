package fusesidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// statTimeout bounds the stat of one mount's root in /readyz.
const statTimeout = 2 * time.Second

// serveHTTP serves /healthz, /readyz and /metrics on addr.
func serveHTTP(addr string, reg *prometheus.Registry, mounts []*served) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context(), mounts); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Sidecar HTTP server stopped")
		}
	}()
	return srv, nil
}

// ready stats the root of every mount (bounded: a hung FUSE server must not
// hang the probe).
func ready(ctx context.Context, mounts []*served) error {
	for _, s := range mounts {
		done := make(chan error, 1)
		go func() {
			_, err := os.Stat(s.vol.MountPath)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("volume %q at %s: %w", s.vol.Name, s.vol.MountPath, err)
			}
		case <-time.After(statTimeout):
			return fmt.Errorf("volume %q at %s: stat did not answer within %s", s.vol.Name, s.vol.MountPath, statTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// RunCheck asks the sidecar at --listen whether every mount serves,
// repeating until --wait has passed. It returns nil once ready.
func (o *Options) RunCheck(ctx context.Context, out io.Writer) error {
	_, port, _ := net.SplitHostPort(o.Listen)
	u := "http://" + net.JoinHostPort("127.0.0.1", port) + "/readyz"
	deadline := time.Now().Add(o.Wait)
	client := &http.Client{Timeout: statTimeout + time.Second}
	for {
		last := probe(ctx, client, u)
		if last == nil {
			fmt.Fprintln(out, "sluice: every volume is mounted and serving")
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("the sluice sidecar's volumes are not serving after %s (%s): %w; see the logs of the sluice-fuse container",
				o.Wait, u, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted while waiting for the sidecar: %w", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func probe(ctx context.Context, client *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
