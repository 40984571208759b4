package bench

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"

	"github.com/zeebo/xxh3"
)

// ChunkSize is the unit of verification: every file's expected content is
// recorded as one XXH3-64 per 1 MiB chunk, so any reader whose reads start
// on chunk boundaries (sequential 1 MiB reads, 8 MiB ranged GETs) can check
// what it read in any order, without a second pass over the data.
const ChunkSize = 1 << 20

// FileSum is the expected content of one file: its size and the XXH3-64 of
// each ChunkSize chunk (the last one may be short).
type FileSum struct {
	Size   int64
	Chunks []uint64
}

// Digest folds the chunk hashes into one number (for reports).
func (s *FileSum) Digest() uint64 {
	buf := make([]byte, 8*len(s.Chunks))
	for i, c := range s.Chunks {
		binary.LittleEndian.PutUint64(buf[8*i:], c)
	}
	return xxh3.Hash(buf)
}

// chunkLen is the length of chunk i.
func (s *FileSum) chunkLen(i int) int64 {
	return min(ChunkSize, s.Size-int64(i)*ChunkSize)
}

// Verify checks p, the bytes of the file at offset off (a multiple of
// ChunkSize), chunk by chunk. p ends at a chunk boundary or at the end of
// the file.
func (s *FileSum) Verify(p []byte, off int64) error {
	if off%ChunkSize != 0 {
		return fmt.Errorf("verify at offset %d: not a multiple of the chunk size", off)
	}
	for len(p) > 0 {
		i := int(off / ChunkSize)
		if i >= len(s.Chunks) {
			return fmt.Errorf("%d bytes past the end of the file (size %d)", len(p), s.Size)
		}
		n := s.chunkLen(i)
		if int64(len(p)) < n {
			return fmt.Errorf("short chunk %d: %d bytes, want %d", i, len(p), n)
		}
		if got := xxh3.Hash(p[:n]); got != s.Chunks[i] {
			return fmt.Errorf("checksum mismatch in chunk %d (offset %d): got %016x, want %016x",
				i, off, got, s.Chunks[i])
		}
		p, off = p[n:], off+n
	}
	return nil
}

// Generator is a reader of size pseudo-random bytes derived from seed (a
// wyrand stream: several GB/s, so generating never limits an upload). It
// records the expected FileSum as it goes; Sum is complete once the reader
// has returned io.EOF.
type Generator struct {
	size, off int64
	state     uint64
	chunk     []byte // current chunk; chunk[pos:] not yet returned
	pos       int
	sum       FileSum
}

// NewGenerator returns a generator of size bytes.
func NewGenerator(seed uint64, size int64) *Generator {
	return &Generator{size: size, state: seed, sum: FileSum{Size: size}, chunk: make([]byte, 0, ChunkSize)}
}

// Sum returns the expected checksums (complete after io.EOF).
func (g *Generator) Sum() *FileSum { return &g.sum }

func (g *Generator) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if g.pos == len(g.chunk) {
			if g.off == g.size {
				break
			}
			g.next()
		}
		c := copy(p[n:], g.chunk[g.pos:])
		g.pos += c
		n += c
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

// next generates the following chunk and records its hash.
func (g *Generator) next() {
	n := min(ChunkSize, g.size-g.off)
	g.chunk = g.chunk[:n]
	fill(g.chunk, &g.state)
	g.sum.Chunks = append(g.sum.Chunks, xxh3.Hash(g.chunk))
	g.off += n
	g.pos = 0
}

// fill writes wyrand output into p.
func fill(p []byte, state *uint64) {
	s := *state
	i := 0
	for ; i+8 <= len(p); i += 8 {
		s += 0xa0761d6478bd642f
		hi, lo := bits.Mul64(s, s^0xe7037ed1a0b428db)
		binary.LittleEndian.PutUint64(p[i:], hi^lo)
	}
	if i < len(p) {
		s += 0xa0761d6478bd642f
		hi, lo := bits.Mul64(s, s^0xe7037ed1a0b428db)
		var tail [8]byte
		binary.LittleEndian.PutUint64(tail[:], hi^lo)
		copy(p[i:], tail[:])
	}
	*state = s
}
