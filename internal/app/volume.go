package app

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/datapath"
	"github.com/sluice-dev/sluice/internal/metrics"
)

// VolumeReader says how a process in a converted pod (the FUSE sidecar, the
// copy-mode init container) reaches the cache workers.
type VolumeReader struct {
	TokenFile     string
	TLS           TLSFlags
	WorkerTimeout time.Duration
	Probe         time.Duration
	Metrics       *metrics.Cache
}

// VolumeConfig is the read stack of one volume the webhook converted: a
// Dataset volume reads only through the Dataset's workers, with the pod's
// token and no origin fallback (origin credentials stay with the workers);
// a source volume reads its origin with the credentials of the variables
// named by CredentialsEnv. sf and cf are the process's flags.
func VolumeConfig(v contract.SidecarVolume, sf SourceFlags, cf CacheFlags, r VolumeReader) (datapath.Config, error) {
	if v.CacheSize != "" {
		cf.Disk = v.CacheSize
	}
	if v.Readahead != "" {
		n, err := strconv.Atoi(v.Readahead)
		if err != nil {
			return datapath.Config{}, fmt.Errorf("readahead %q: %w", v.Readahead, err)
		}
		cf.Readahead = n
	}
	if v.Dataset == "" && v.CredentialsEnv != "" {
		// Each source volume may name its own Secret: its credentials come
		// from its own variables, not the process environment.
		sf.AccessKey = os.Getenv(v.CredentialsEnv + contract.EnvAccessKeyID)
		sf.SecretKey = os.Getenv(v.CredentialsEnv + contract.EnvSecretAccessKey)
		if sf.AccessKey == "" || sf.SecretKey == "" {
			return datapath.Config{}, fmt.Errorf("credentials: %s%s and %s%s must both be set", v.CredentialsEnv,
				contract.EnvAccessKeyID, v.CredentialsEnv, contract.EnvSecretAccessKey)
		}
	}
	cfg, err := Config(v.Source, &sf, &cf, r.Metrics, r.Probe)
	if err != nil {
		return datapath.Config{}, err
	}
	if v.Dataset != "" {
		w := datapath.WorkersAt(v.Workers)
		_, w.Dataset = contract.SplitDatasetRef(v.Dataset)
		w.TokenFile, w.Timeout, w.Refresh = r.TokenFile, r.WorkerTimeout, 10*time.Second
		w.CAFile, w.Insecure = r.TLS.CAFile, r.TLS.Insecure
		cfg.Source, cfg.Workers = "", &w
	}
	return cfg, nil
}
