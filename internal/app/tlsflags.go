package app

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/sluice-dev/sluice/internal/pki"
)

// TLSFlags say how a client verifies the cache workers and the
// controller's heartbeat endpoint, and whether a token may travel in the
// clear.
type TLSFlags struct {
	CAFile   string
	Insecure bool
}

// AddFlags registers --workers-ca (default defaultCA) and
// --insecure-workers.
func (f *TLSFlags) AddFlags(fs *pflag.FlagSet, defaultCA string) {
	fs.StringVar(&f.CAFile, "workers-ca", defaultCA, "CA bundle (PEM) the cache workers' and the controller's certificates chain to: they are then reached over TLS (re-read when it changes)")
	fs.BoolVar(&f.Insecure, "insecure-workers", false, "send the token to workers and the controller over plain http:// (a trusted network only)")
}

// Validate checks that a token (in tokenFile) is sent only over TLS; urls
// are the plain or https:// endpoints the token goes to ("" entries are
// skipped; an entry without a scheme is reached through TLS when a CA is
// given).
func (f *TLSFlags) Validate(tokenFile string, urls ...string) error {
	if tokenFile == "" || f.Insecure {
		return nil
	}
	for _, u := range urls {
		switch {
		case u == "":
		case strings.HasPrefix(u, "http://"):
			return fmt.Errorf("%s is plain http, and the token is sent only over TLS: use https:// with --workers-ca, or --insecure-workers on a trusted network", u)
		case f.CAFile == "":
			return fmt.Errorf("the token is sent only over TLS: give --workers-ca (the CA bundle of the workers and the controller) for %s, or --insecure-workers on a trusted network", u)
		}
	}
	return nil
}

// Args are the flags that pass f on to a child process.
func (f *TLSFlags) Args() []string {
	if f.Insecure {
		return []string{"--insecure-workers"}
	}
	if f.CAFile != "" {
		return []string{"--workers-ca", f.CAFile}
	}
	return nil
}

// Client is the TLS client configuration (nil without --workers-ca).
func (f *TLSFlags) Client() (*tls.Config, error) {
	if f.CAFile == "" {
		return nil, nil
	}
	tc, err := pki.ClientConfigFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("--workers-ca: %w", err)
	}
	return tc, nil
}
