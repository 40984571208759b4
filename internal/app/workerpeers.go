package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/datapath"
	"github.com/sluice-dev/sluice/internal/metrics"
)

// PeerFlags let a cache worker read a block it does not hold from the
// worker that held it before this one joined the set, before the origin
// (cacheserver.PeerGetter), and hand its blocks over when it leaves.
type PeerFlags struct {
	DNS       string
	URLs      []string
	Self      string
	TokenFile string
	CAFile    string
	Insecure  bool
	// Handover bounds the scale-down handover on SIGTERM (0: none).
	Handover time.Duration
}

// AddFlags registers the peer flags.
func (p *PeerFlags) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&p.DNS, "peers-dns", "", "the workers' own headless Service (host:port): a block this worker does not hold is asked of the peer that held it before the origin")
	fs.StringSliceVar(&p.URLs, "peers", nil, "instead of --peers-dns: the other workers' URLs (http(s)://host:port), a fixed set outside Kubernetes")
	fs.StringVar(&p.Self, "peer-ip", "", "with --peers-dns: this worker's pod IP, left out of its peers")
	fs.StringVar(&p.TokenFile, "peer-token-file", "", "with --peers-dns or --peers: the token presented to the peers (a projected service-account token)")
	fs.StringVar(&p.CAFile, "peers-ca", "", "with --peers-dns or --peers: the CA bundle the peers' certificates chain to (they are then reached over TLS)")
	fs.BoolVar(&p.Insecure, "insecure-peers", false, "with --peers-dns or --peers: send the token to the peers over plain http:// (a trusted network only)")
	fs.DurationVar(&p.Handover, "handover-timeout", 15*time.Second, "with peers, on SIGTERM: how long the remaining peers may take the blocks this worker served last (0: no handover)")
}

// Validate checks the peer flags.
func (p *PeerFlags) Validate() error {
	if p.Handover < 0 {
		return fmt.Errorf("--handover-timeout %s: must not be negative", p.Handover)
	}
	switch {
	case p.DNS == "" && len(p.URLs) == 0:
		return nil
	case p.DNS != "" && len(p.URLs) > 0:
		return errors.New("--peers-dns and --peers exclude each other")
	case p.DNS != "":
		if _, _, err := net.SplitHostPort(p.DNS); err != nil {
			return fmt.Errorf("--peers-dns %q: want host:port: %w", p.DNS, err)
		}
		if net.ParseIP(p.Self) == nil {
			return fmt.Errorf("--peer-ip %q: want this worker's pod IP (it is left out of the peers)", p.Self)
		}
	}
	for _, u := range p.URLs {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return fmt.Errorf("--peers: %q is not an http(s)://host:port URL", u)
		}
	}
	switch {
	case p.TokenFile == "":
		return errors.New("peers (--peers-dns, --peers) need --peer-token-file: the peers admit workers by their token")
	case p.CAFile == "" && !p.Insecure:
		return errors.New("peers (--peers-dns, --peers): the token is sent only over TLS: give --peers-ca, or --insecure-peers on a trusted network")
	}
	return nil
}

// below returns the wrapper of the worker's Getter that asks the peers
// first and the peers' pool (nil, nil without --peers-dns), and keeps the
// peer set current until ctx ends.
func (p *PeerFlags) below(ctx context.Context, dataset string, m *metrics.Cache) (func(blockcache.Getter) blockcache.Getter, *cacheserver.Pool, error) {
	if p.DNS == "" && len(p.URLs) == 0 {
		return nil, nil, nil
	}
	// The set is resolved every 2 s: a worker that has just joined must
	// see the others that joined with it to ask the right one.
	pc := cacheserver.PoolConfig{DNS: p.DNS, URLs: p.URLs, Refresh: 2 * time.Second, Dataset: dataset, TokenFile: p.TokenFile,
		Exclude: p.Self, Insecure: p.Insecure, Metrics: m, Timeout: 10 * time.Second}
	pool, err := datapath.StartPool(ctx, pc, p.CAFile, "--peers-ca")
	if err != nil {
		return nil, nil, err
	}
	return func(origin blockcache.Getter) blockcache.Getter {
		return &cacheserver.PeerGetter{Peers: pool, Origin: origin}
	}, pool, nil
}
