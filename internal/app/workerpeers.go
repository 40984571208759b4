package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/datapath"
	"github.com/sluice-dev/sluice/internal/metrics"
)

// PeerFlags let a cache worker read a block it does not hold from the
// worker that held it before this one joined the set, before the origin
// (cacheserver.PeerGetter).
type PeerFlags struct {
	DNS       string
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
	fs.StringVar(&p.Self, "peer-ip", "", "with --peers-dns: this worker's pod IP, left out of its peers")
	fs.StringVar(&p.TokenFile, "peer-token-file", "", "with --peers-dns: the token presented to the peers (a projected service-account token)")
	fs.StringVar(&p.CAFile, "peers-ca", "", "with --peers-dns: the CA bundle the peers' certificates chain to (they are then reached over TLS)")
	fs.BoolVar(&p.Insecure, "insecure-peers", false, "with --peers-dns: send the token to the peers over plain http:// (a trusted network only)")
	fs.DurationVar(&p.Handover, "handover-timeout", 15*time.Second, "with --peers-dns, on SIGTERM: how long the remaining peers may take the blocks this worker served last (0: no handover)")
}

// Validate checks the peer flags.
func (p *PeerFlags) Validate() error {
	if p.Handover < 0 {
		return fmt.Errorf("--handover-timeout %s: must not be negative", p.Handover)
	}
	if p.DNS == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(p.DNS); err != nil {
		return fmt.Errorf("--peers-dns %q: want host:port: %w", p.DNS, err)
	}
	switch {
	case net.ParseIP(p.Self) == nil:
		return fmt.Errorf("--peer-ip %q: want this worker's pod IP (it is left out of the peers)", p.Self)
	case p.TokenFile == "":
		return errors.New("--peers-dns needs --peer-token-file: the peers admit workers by their token")
	case p.CAFile == "" && !p.Insecure:
		return errors.New("--peers-dns: the token is sent only over TLS: give --peers-ca, or --insecure-peers on a trusted network")
	}
	return nil
}

// below returns the wrapper of the worker's Getter that asks the peers
// first and the peers' pool (nil, nil without --peers-dns), and keeps the
// peer set current until ctx ends.
func (p *PeerFlags) below(ctx context.Context, dataset string, m *metrics.Cache) (func(blockcache.Getter) blockcache.Getter, *cacheserver.Pool, error) {
	if p.DNS == "" {
		return nil, nil, nil
	}
	// The set is resolved every 2 s: a worker that has just joined must
	// see the others that joined with it to ask the right one.
	pc := cacheserver.PoolConfig{DNS: p.DNS, Refresh: 2 * time.Second, Dataset: dataset, TokenFile: p.TokenFile,
		Exclude: p.Self, Insecure: p.Insecure, Metrics: m, Timeout: 10 * time.Second}
	pool, err := datapath.StartPool(ctx, pc, p.CAFile, "--peers-ca")
	if err != nil {
		return nil, nil, err
	}
	return func(origin blockcache.Getter) blockcache.Getter {
		return &cacheserver.PeerGetter{Peers: pool, Origin: origin}
	}, pool, nil
}
