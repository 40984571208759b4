package app

import (
	"strings"
	"testing"
	"time"
)

func TestCacheFlagsConfig(t *testing.T) {
	base := func() CacheFlags {
		return CacheFlags{Memory: "256Mi", Disk: "10Gi", BlockSize: "4Mi", Readahead: 8, MaxFetches: 32, MetadataTTL: time.Minute}
	}
	tests := []struct {
		name   string
		mutate func(*CacheFlags)
		want   string // error fragment; "" = valid
	}{
		{"defaults", func(*CacheFlags) {}, ""},
		{"decimal quantities", func(c *CacheFlags) { c.Memory, c.Disk = "512M", "20G" }, ""},
		{"not a size", func(c *CacheFlags) { c.Memory = "lots" }, `--cache-memory "lots" is not a size`},
		{"negative disk", func(c *CacheFlags) { c.Disk = "-1Gi" }, "--cache-disk"},
		{"fractional bytes", func(c *CacheFlags) { c.BlockSize = "0.5" }, "--block-size"},
		{"tiny block", func(c *CacheFlags) { c.BlockSize = "4Ki" }, "at least 64Ki"},
		{"huge block", func(c *CacheFlags) { c.BlockSize = "1Gi"; c.Memory = "2Gi" }, "at most 256Mi"},
		{"block over memory", func(c *CacheFlags) { c.Memory = "8Mi"; c.BlockSize = "16Mi" }, "smaller than one block"},
		{"readahead out of range", func(c *CacheFlags) { c.Readahead = 1000 }, "--readahead 1000"},
		{"fetches out of range", func(c *CacheFlags) { c.MaxFetches = 0 }, "--max-fetches 0"},
		{"negative TTL", func(c *CacheFlags) { c.MetadataTTL = -time.Second }, "--metadata-ttl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mutate(&c)
			cfg, err := c.Config()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Config() = %v, want valid", err)
				}
				if cfg.BlockSize <= 0 || cfg.MemoryBytes < cfg.BlockSize {
					t.Fatalf("Config() = %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Config() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestReadaheadMeansBlocks: the flag and the cache's Config mean the same
// thing, a number of blocks, 0 for none.
func TestReadaheadMeansBlocks(t *testing.T) {
	for _, n := range []int{0, 1, 8, 256} {
		c := CacheFlags{Memory: "256Mi", Disk: "1Gi", BlockSize: "4Mi", Readahead: n, MaxFetches: 1}
		cfg, err := c.Config()
		if err != nil || cfg.Readahead != n {
			t.Errorf("--readahead %d gave Readahead %d (err %v)", n, cfg.Readahead, err)
		}
	}
}

func TestWorkerFlagsValidate(t *testing.T) {
	tests := []struct {
		name string
		w    WorkerFlags
		ok   bool
	}{
		{"no workers: nothing to check", WorkerFlags{}, true},
		{"static list", WorkerFlags{URLs: []string{"http://a:1"}, Timeout: time.Second, Refresh: time.Second}, true},
		{"zero timeout", WorkerFlags{URLs: []string{"http://a:1"}, Refresh: time.Second}, false},
		{"zero refresh", WorkerFlags{DNS: "w:1", Timeout: time.Second}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.w.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestPeerFlagsValidate(t *testing.T) {
	ok := PeerFlags{DNS: "w.ns.svc:8080", Self: "10.0.0.7", TokenFile: "/t", CAFile: "/ca"}
	with := func(f func(*PeerFlags)) PeerFlags { p := ok; f(&p); return p }
	tests := []struct {
		name    string
		p       PeerFlags
		wantErr string // "" for none
	}{
		{"no peers: nothing to check", PeerFlags{}, ""},
		{"peers over TLS", ok, ""},
		{"peers over plain http on a trusted network", with(func(p *PeerFlags) { p.CAFile, p.Insecure = "", true }), ""},
		{"not host:port", with(func(p *PeerFlags) { p.DNS = "w.ns.svc" }), "--peers-dns"},
		{"no pod IP", with(func(p *PeerFlags) { p.Self = "" }), "--peer-ip"},
		{"a name, not an IP", with(func(p *PeerFlags) { p.Self = "worker-0" }), "--peer-ip"},
		{"no token", with(func(p *PeerFlags) { p.TokenFile = "" }), "--peer-token-file"},
		{"a token in the clear", with(func(p *PeerFlags) { p.CAFile = "" }), "--peers-ca"},
		{"no handover", with(func(p *PeerFlags) { p.Handover = 0 }), ""},
		{"a negative handover", with(func(p *PeerFlags) { p.Handover = -time.Second }), "--handover-timeout"},
		{"a static set", PeerFlags{URLs: []string{"http://127.0.0.1:1"}, TokenFile: "/t", Insecure: true}, ""},
		{"a static set and DNS", with(func(p *PeerFlags) { p.URLs = []string{"https://w:1"} }), "exclude"},
		{"a static set of no URLs", PeerFlags{URLs: []string{"w:1"}, TokenFile: "/t", Insecure: true}, "--peers"},
		{"a static set without a token", PeerFlags{URLs: []string{"http://w:1"}, Insecure: true}, "--peer-token-file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tc.wantErr)
			}
		})
	}
}
