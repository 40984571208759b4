package blockcache

import (
	"encoding/json"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/atomicfile"
)

// A clean shutdown spares the next start from re-reading the cache.
//
// Blocks loaded from disk are normally unverified: the first read of each
// one reads the whole block and checks its CRC-32C, because a crash may
// have left an index record whose bytes never reached the disk. On a clean
// Close, the tier flushes its files to stable storage (syncfs) and records
// each data file's size and modification time in "clean". The next start
// reads and deletes that record; blocks of data files that still match it
// are trusted as verified, so a restarted mount serves them at once (and
// opens complete files with passthrough without reading them first). A
// crash leaves no record, and a data file changed behind the cache's back
// no longer matches it: both are verified block by block as before.

const cleanFile = "clean"

type fileStamp struct {
	Size    int64 `json:"size"`
	MtimeNs int64 `json:"mtimeNs"`
}

func stamp(path string) (fileStamp, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, false
	}
	return fileStamp{Size: fi.Size(), MtimeNs: fi.ModTime().UnixNano()}, true
}

// readCleanRecord returns the stamps of the last clean shutdown and removes
// the record, so that a crash from now on is not mistaken for a clean stop.
func (d *diskTier) readCleanRecord() map[string]fileStamp {
	p := filepath.Join(d.dir, cleanFile)
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	if err := os.Remove(p); err != nil {
		klog.InfoS("Cannot remove the clean-shutdown record; verifying every block", "err", err)
		return nil
	}
	var stamps map[string]fileStamp
	if json.Unmarshal(raw, &stamps) != nil {
		return nil
	}
	return stamps
}

// unchangedSinceCleanStop reports whether object id's data file is as the
// last clean shutdown left it.
func (d *diskTier) unchangedSinceCleanStop(id string, clean map[string]fileStamp) bool {
	want, ok := clean[id]
	if !ok {
		return false
	}
	got, ok := stamp(d.objectPath(id, ".data"))
	return ok && got == want
}

// writeCleanRecord flushes the cache files and records their stamps. The
// caller holds no lock and nothing writes to the tier any more.
func (d *diskTier) writeCleanRecord() {
	if err := unix.Syncfs(int(d.lockFile.Fd())); err != nil {
		klog.InfoS("Flushing the cache dir failed; the next start verifies every block", "err", err)
		return
	}
	stamps := map[string]fileStamp{}
	for id, o := range d.objects {
		if o.seg != nil {
			continue // packed: verified on first read
		}
		if s, ok := stamp(d.objectPath(id, ".data")); ok {
			stamps[id] = s
		}
	}
	raw, err := json.Marshal(stamps)
	if err != nil {
		return
	}
	_ = atomicfile.WriteFile(filepath.Join(d.dir, cleanFile), raw, 0o600)
}
