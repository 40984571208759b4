package blockcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash/crc32"
	"strconv"

	"github.com/sluice-dev/sluice/internal/source"
)

// ObjectRef names one version of one object of a dataset.
type ObjectRef struct {
	Source  string // source.Source.ID()
	Path    string // path within the dataset
	Version string // source.Entry.Version
	Size    int64
}

// id is the object's cache identity: a hash of source, path and version, so
// a changed object never shares blocks with its former self.
func (o ObjectRef) id() string {
	h := sha256.New()
	for _, s := range []string{o.Source, o.Path, o.Version, strconv.FormatInt(o.Size, 10)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// BlockRef is one fixed-size block of an object.
type BlockRef struct {
	Object    ObjectRef
	Index     int64
	BlockSize int64
}

// Offset is the block's first byte within the object.
func (b BlockRef) Offset() int64 { return b.Index * b.BlockSize }

// Len is the block's length (the last block of an object may be short).
func (b BlockRef) Len() int64 {
	return min(b.BlockSize, b.Object.Size-b.Offset())
}

// Key is a stable string for the block: object identity and index.
func (b BlockRef) Key() string { return blockKey(b.Object.id(), b.Index) }

// blockKey is the Key of block index of the object whose id is id.
func blockKey(id string, index int64) string { return id + "/" + strconv.FormatInt(index, 10) }

// Getter fetches blocks from the tier below the local cache: an origin or
// the cache workers, both as a source.Source through OriginGetter. GetBlock
// fills p, whose length is b.Len(), entirely or returns an error.
type Getter interface {
	GetBlock(ctx context.Context, b BlockRef, p []byte) error
}

// Checksum is the CRC-32C (Castagnoli) of p: the checksum of every block
// on disk and on the wire between workers and clients.
func Checksum(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// OriginGetter reads blocks straight from a source (an origin, or the
// cache workers' cacheserver.Source).
type OriginGetter struct{ Source source.Source }

// GetBlock implements Getter.
func (g OriginGetter) GetBlock(ctx context.Context, b BlockRef, p []byte) error {
	return g.Source.ReadAt(ctx, b.Object.Path, b.Object.Version, p, b.Offset())
}

// GetBlockChecksum implements checksumGetter when the source sends
// checked CRCs (source.ChecksumReader).
func (g OriginGetter) GetBlockChecksum(ctx context.Context, b BlockRef, p []byte) (uint32, bool, error) {
	cr, ok := g.Source.(source.ChecksumReader)
	if !ok {
		return 0, false, g.GetBlock(ctx, b, p)
	}
	crc, err := cr.ReadAtChecksum(ctx, b.Object.Path, b.Object.Version, p, b.Offset())
	return crc, err == nil, err
}

// checksumGetter is a Getter that may return a block's CRC-32C, already
// checked, with its bytes: one checksum pass per block per process.
type checksumGetter interface {
	GetBlockChecksum(ctx context.Context, b BlockRef, p []byte) (crc uint32, known bool, err error)
}
