package fusefs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluice-dev/sluice/internal/testutil"
)

// TestNoOpenReadsFromThePageCache: with Options.NoOpen, small and large
// files read right cold and warm; the kernel asks to open a file once
// (answered ENOSYS) and never again, and the warm pass is answered by the
// page cache alone: no byte more is served by this process.
func TestNoOpenReadsFromThePageCache(t *testing.T) {
	files := map[string][]byte{"big/model.bin": testutil.RandBytes(5*testBlock+17, 99)}
	for i := 0; i < 30; i++ {
		files[fmt.Sprintf("img/%02d/x%03d.jpg", i%3, i)] = testutil.RandBytes(3000+97*i, uint64(i))
	}
	m := mountSource(t, fileBackend(t, files), mountConfig{blockSize: testBlock, passthrough: true, noOpen: true})
	var servedAfter [2]float64
	for pass := range 2 {
		for p, want := range files {
			got, err := os.ReadFile(filepath.Join(m.dir, p))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("pass %d, %s: err %v, equal %v", pass, p, err, bytes.Equal(got, want))
			}
		}
		servedAfter[pass] = testutil.CounterValue(t, m.metrics.BytesServed)
	}
	total := 0
	for _, d := range files {
		total += len(d)
	}
	if servedAfter[0] < float64(total) {
		t.Errorf("cold pass served %v bytes, want ≥ %d", servedAfter[0], total)
	}
	if servedAfter[1] != servedAfter[0] {
		t.Errorf("warm pass served %v more bytes through FUSE, want 0 (the page cache)", servedAfter[1]-servedAfter[0])
	}
	if n := m.fsys.front.asked.Load(); n != 1 {
		t.Errorf("the kernel asked to open %d times over %d opens, want once", n, 2*len(files))
	}
	if got := m.getter.maxPerBlock(); got != 1 {
		t.Errorf("a block was fetched from the origin %d times, want once", got)
	}
}
