package fusesidecar

import (
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/internal/app"
	"github.com/sluice-dev/sluice/internal/contract"
)

func TestFitMemory(t *testing.T) {
	tests := []struct {
		name        string
		limit       string // $SLUICE_MEMORY_LIMIT
		volumes     int
		wantMemory  string // --cache-memory after
		wantFetches int
		wantErr     string
	}{
		{name: "no limit", limit: "", volumes: 2, wantMemory: "256Mi", wantFetches: 32},
		{name: "fits", limit: "1073741824", volumes: 1, wantMemory: "256Mi", wantFetches: 32},
		// budget 360Mi: 296Mi per volume, the tier kept, 10 fetches.
		{name: "fewer fetches", limit: "419430400", volumes: 1, wantMemory: "256Mi", wantFetches: 10},
		// budget 270Mi: 206Mi per volume, 4 fetches, a 188Mi tier.
		{name: "smaller tier", limit: "314572800", volumes: 1, wantMemory: "197132288", wantFetches: 4},
		// budget 90Mi: 13Mi per volume of two, one block of tier, 2 fetches.
		{name: "one block each", limit: "104857600", volumes: 2, wantMemory: "4194304", wantFetches: 2},
		{name: "too small", limit: "83886080", volumes: 2,
			wantErr: "memory limit 80Mi cannot hold 2 volume(s) of one 4Mi block each beside the sidecar's own 64Mi: give the sidecar at least 89Mi"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(contract.EnvMemoryLimit, tc.limit)
			o := &Options{CacheFlags: app.CacheFlags{Memory: "256Mi", Disk: "10Gi", BlockSize: "4Mi", Readahead: 8, MaxFetches: 32},
				Volumes: make([]contract.SidecarVolume, tc.volumes)}
			err := o.fitMemory(contract.SidecarMemoryFraction)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("fitMemory: %v; want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.CacheFlags.Memory != tc.wantMemory || o.CacheFlags.MaxFetches != tc.wantFetches {
				t.Errorf("cache memory %s, fetches %d; want %s, %d", o.CacheFlags.Memory, o.CacheFlags.MaxFetches, tc.wantMemory, tc.wantFetches)
			}
			if tc.limit != "" {
				cfg, err := o.CacheFlags.Config()
				if err != nil {
					t.Fatal(err)
				}
				need := contract.SidecarMemory(tc.volumes, cfg.MemoryBytes, cfg.BlockSize, cfg.MaxFetches)
				if limit, _ := strconv.ParseInt(tc.limit, 10, 64); float64(need) > 0.9*float64(limit) {
					t.Errorf("the caches need %d bytes, over 0.9 × the limit %s", need, tc.limit)
				}
			}
		})
	}
}
