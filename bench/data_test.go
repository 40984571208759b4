package bench

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/zeebo/xxh3"
)

// readAll drains g with reads of n bytes.
func readAll(t *testing.T, g *Generator, n int) []byte {
	t.Helper()
	var out bytes.Buffer
	buf := make([]byte, n)
	for {
		k, err := g.Read(buf)
		out.Write(buf[:k])
		if err == io.EOF {
			return out.Bytes()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestGenerator(t *testing.T) {
	tests := []struct {
		name     string
		size     int64
		readSize int
	}{
		{"one short chunk", 1000, 4096},
		{"exact chunks, odd reads", 3 * ChunkSize, 777_777},
		{"partial last chunk, big reads", 2*ChunkSize + 5, 5 << 20},
		{"byte-sized reads", 1<<10 + 3, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGenerator(7, tc.size)
			data := readAll(t, g, tc.readSize)
			if int64(len(data)) != tc.size {
				t.Fatalf("generated %d bytes, want %d", len(data), tc.size)
			}
			again := readAll(t, NewGenerator(7, tc.size), ChunkSize)
			if !bytes.Equal(data, again) {
				t.Fatal("the stream depends on the read size")
			}
			sum := g.Sum()
			wantChunks := int((tc.size + ChunkSize - 1) / ChunkSize)
			if len(sum.Chunks) != wantChunks {
				t.Fatalf("%d chunk sums, want %d", len(sum.Chunks), wantChunks)
			}
			for i, c := range sum.Chunks {
				end := min(int64(i+1)*ChunkSize, tc.size)
				if want := xxh3.Hash(data[int64(i)*ChunkSize : end]); c != want {
					t.Fatalf("chunk %d sum %x, want %x", i, c, want)
				}
			}
			if err := sum.Verify(data, 0); err != nil {
				t.Fatalf("Verify of the generated data: %v", err)
			}
		})
	}
	a := readAll(t, NewGenerator(1, 4096), 4096)
	b := readAll(t, NewGenerator(2, 4096), 4096)
	if bytes.Equal(a, b) {
		t.Error("different seeds gave the same bytes")
	}
}

func TestVerify(t *testing.T) {
	const size = 3*ChunkSize + 100
	g := NewGenerator(3, size)
	data := readAll(t, g, ChunkSize)
	sum := g.Sum()
	corrupt := bytes.Clone(data)
	corrupt[2*ChunkSize+17] ^= 1
	tests := []struct {
		name    string
		p       []byte
		off     int64
		wantErr string
	}{
		{"whole file", data, 0, ""},
		{"one middle chunk", data[ChunkSize : 2*ChunkSize], ChunkSize, ""},
		{"last short chunk", data[3*ChunkSize:], 3 * ChunkSize, ""},
		{"range of two chunks", data[ChunkSize : 3*ChunkSize], ChunkSize, ""},
		{"flipped bit", corrupt, 0, "checksum mismatch in chunk 2"},
		{"unaligned offset", data[10:ChunkSize], 10, "not a multiple"},
		{"short chunk", data[:ChunkSize-1], 0, "short chunk 0"},
		{"chunk at the wrong offset", data[:ChunkSize], ChunkSize, "checksum mismatch in chunk 1"},
		{"past the end", data[:ChunkSize], 4 * ChunkSize, "past the end"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := sum.Verify(tc.p, tc.off)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	if sum.Digest() == NewGenerator(4, 1).Sum().Digest() {
		t.Error("digest does not depend on the chunks")
	}
}
