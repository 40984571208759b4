package fusesidecar

import (
	"fmt"
	"os"
	"strconv"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/contract"
)

// fitMemory makes the sidecar's caches fit its container's memory limit
// ($SLUICE_MEMORY_LIMIT, from the downward API): when the volumes' memory
// tiers and the blocks they fetch at once (contract.SidecarMemory) need
// more than fraction of the limit, each volume gets less — fewer parallel
// fetches first (down to 4), then a smaller memory tier (down to one
// block), then fewer fetches still (down to 1). It fails, naming the
// minimum, when even that does not fit. Without a limit nothing changes.
func (o *Options) fitMemory(fraction float64) error {
	raw := os.Getenv(contract.EnvMemoryLimit)
	limit, err := strconv.ParseInt(raw, 10, 64)
	if raw == "" || err != nil || limit <= 0 || len(o.Volumes) == 0 {
		return nil // no limit (or none usable: setMemoryLimit logs it)
	}
	cfg, err := o.CacheFlags.Config()
	if err != nil {
		return err
	}
	n, tier, block, fetches := len(o.Volumes), cfg.MemoryBytes, cfg.BlockSize, cfg.MaxFetches
	budget := int64(float64(limit) * fraction)
	if contract.SidecarMemory(n, tier, block, fetches) <= budget {
		return nil
	}
	floor := contract.SidecarMemory(n, block, block, 1)
	if floor > budget {
		return fmt.Errorf("the container's memory limit %s cannot hold %d volume(s) of one %s block each beside the sidecar's own %s: "+
			"give the sidecar at least %s (the pod annotation %s)", size(limit), n, size(block), size(contract.SidecarBaseMemory),
			size(int64(float64(floor)/fraction)+1), contract.SidecarMemoryLimitAnnotation)
	}
	per := (budget - contract.SidecarBaseMemory) / int64(n) // per volume: tier + fetches × block
	newTier, newFetches := tier, fetches
	switch {
	case tier+4*block <= per: // fewer fetches suffice
		newFetches = min(fetches, int((per-tier)/block))
	case block+4*block <= per: // 4 fetches, a smaller tier
		newFetches = min(fetches, 4)
		newTier = (per - int64(newFetches)*block) / block * block
	default: // one block of tier, the fetches that fit (≥ 1: floor fits)
		newTier = block
		newFetches = min(fetches, int((per-block)/block))
	}
	klog.InfoS("Shrinking the caches to fit the container's memory limit", "limit", limit, "volumes", n,
		"cacheMemory", tier, "toCacheMemory", newTier, "maxFetches", fetches, "toMaxFetches", newFetches)
	if newTier != tier {
		o.CacheFlags.Memory = strconv.FormatInt(newTier, 10)
	}
	o.CacheFlags.MaxFetches = newFetches
	return nil
}

func size(b int64) string { return fmt.Sprintf("%dMi", (b+(1<<20)-1)>>20) }
