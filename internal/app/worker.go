package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/datapath"
	"github.com/sluice-dev/sluice/internal/kubeauth"
	"github.com/sluice-dev/sluice/internal/pki"
)

// WorkerOptions are the options of `sluice cache-worker SOURCE`.
type WorkerOptions struct {
	Source       string
	Listen       string
	Dataset      string
	TokenFile    string
	TokenReview  bool
	Kubeconfig   string
	Namespaces   []string
	Trusted      []string
	MetricsAddr  string
	MaxInFlight  int
	DrainTimeout time.Duration
	ProbeTime    time.Duration
	TLSCertFile  string
	TLSKeyFile   string
	SourceFlags  SourceFlags
	CacheFlags   CacheFlags
	Peers        PeerFlags
}

// AddFlags registers the worker flags.
func (o *WorkerOptions) AddFlags(fs *pflag.FlagSet) {
	o.SourceFlags.AddFlags(fs)
	if o.CacheFlags.ReadBudget <= 0 {
		o.CacheFlags.ReadBudget = WorkerReadBudget
	}
	o.CacheFlags.AddFlags(fs)
	fs.StringVar(&o.Listen, "listen", ":8080", "address of the worker API")
	fs.StringVar(&o.Dataset, "dataset", cacheserver.DefaultDataset, "dataset name clients ask for")
	fs.StringVar(&o.TokenFile, "token-file", "", "file holding the bearer token clients must present")
	fs.BoolVar(&o.TokenReview, "token-review", false, "admit pods by their projected service-account token (audience sluice.dev, TokenReview) instead of --token-file")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "with --token-review: kubeconfig (in-cluster config when empty)")
	fs.StringSliceVar(&o.Namespaces, "allow-namespaces", nil, "with --token-review: namespaces whose pods may read (the Dataset's own and its access list)")
	fs.StringSliceVar(&o.Trusted, "trust-service-accounts", nil, "with --token-review: service accounts (namespace/name) admitted from any namespace, e.g. the CSI node plugin's, which checks each pod's access itself")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at this address")
	fs.IntVar(&o.MaxInFlight, "max-inflight", 1024, "concurrent data requests before answering 503")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may finish")
	fs.DurationVar(&o.ProbeTime, "probe-timeout", 20*time.Second, "how long to try reaching the origin at start")
	fs.StringVar(&o.TLSCertFile, "tls-cert-file", "", "serve the worker API over TLS with this PEM certificate (re-read when it changes)")
	fs.StringVar(&o.TLSKeyFile, "tls-key-file", "", "the PEM key of --tls-cert-file")
	o.Peers.AddFlags(fs)
}

// Validate checks the options without touching the origin.
func (o *WorkerOptions) Validate() error {
	if err := validateSourceURL(o.Source); err != nil {
		return err
	}
	switch {
	case o.TokenFile == "" && !o.TokenReview:
		return errors.New("give --token-file or --token-review: clients must authenticate")
	case o.TokenFile != "" && o.TokenReview:
		return errors.New("--token-file and --token-review exclude each other")
	case o.TokenReview && len(o.Namespaces) == 0:
		return errors.New("--token-review needs --allow-namespaces (at least the Dataset's namespace)")
	}
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	if o.MaxInFlight <= 0 {
		return fmt.Errorf("--max-inflight %d: must be positive", o.MaxInFlight)
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return errors.New("--tls-cert-file and --tls-key-file go together")
	}
	if err := o.Peers.Validate(); err != nil {
		return err
	}
	_, err := o.CacheFlags.Config()
	return err
}

// RunWorker serves until ctx is done, then drains.
func (o *WorkerOptions) RunWorker(ctx context.Context, out io.Writer) error {
	auth, err := o.authenticator()
	if err != nil {
		return err
	}
	m, stop, err := serveMetrics(o.MetricsAddr)
	if err != nil {
		return err
	}
	defer stop()
	cfg, err := Config(o.Source, &o.SourceFlags, &o.CacheFlags, m, o.ProbeTime)
	if err != nil {
		return err
	}
	// The peers' pool outlives ctx by the handover.
	pctx, stopPeers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPeers()
	var peers *cacheserver.Pool
	if cfg.Below, peers, err = o.Peers.below(pctx, o.Dataset, m); err != nil {
		return err
	}
	rt, err := datapath.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer rt.Cache.Close()
	api, err := cacheserver.NewServer(cacheserver.ServerConfig{Dataset: o.Dataset, Listings: rt.Listings,
		Cache: rt.Cache, Auth: auth, MaxInFlight: o.MaxInFlight, Peers: peers})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	srv := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	scheme := "http"
	if o.TLSCertFile != "" {
		if srv.TLSConfig, err = pki.ServerConfig(ctx, o.TLSCertFile, o.TLSKeyFile); err != nil {
			ln.Close()
			return err
		}
		ln, scheme = tls.NewListener(ln, srv.TLSConfig), "https"
	} else {
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(out, "sluice: cache worker for %s listening on %s\n", rt.Source.ID(), ln.Addr())
	klog.InfoS("Cache worker serving", "source", rt.Source.ID(), "addr", ln.Addr().String(), "scheme", scheme, "dataset", o.Dataset)
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	api.Drain()
	if peers != nil && o.Peers.Handover > 0 {
		hctx, cancel := context.WithTimeout(context.Background(), o.Peers.Handover)
		api.HandOver(hctx, peers, ln.Addr().(*net.TCPAddr).Port)
		cancel()
	}
	klog.InfoS("Draining", "timeout", o.DrainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), o.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

// authenticator is the static token of --token-file, or pod tokens checked
// with TokenReview (--token-review).
func (o *WorkerOptions) authenticator() (cacheserver.Authenticator, error) {
	if !o.TokenReview {
		a, err := cacheserver.NewTokenFile(o.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		return a, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &cacheserver.PodTokens{Reviewer: &kubeauth.TokenReviewer{Client: cs}, Namespaces: o.Namespaces, Dataset: o.Dataset,
		Trusted: o.Trusted}, nil
}
