package cacheserver

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/contract"
)

// A client's Source keeps the first objects it read through the workers,
// in the order of their first read, each once, at most
// contract.FirstReadsPerClient; a second read of a cached object adds
// nothing.
func TestSourceKeepsTheFirstObjectsItRead(t *testing.T) {
	n := contract.FirstReadsPerClient + 2
	o := startOrigin(t, n, 3*testBlock)
	w := startWorker(t, o.source(t))
	cache, src, _ := newClient(t, []string{w.url}, nil)
	ctx := context.Background()
	// Read the objects in reverse name order, the first one twice.
	var order []string
	for i := n - 1; i >= 0; i-- {
		order = append(order, fmt.Sprintf("shard-%02d.bin", i))
	}
	order = append(order, order[0])
	for _, p := range order {
		e, err := src.Stat(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, e.Size)
		obj := blockcache.ObjectRef{Source: src.ID(), Path: p, Version: e.Version, Size: e.Size}
		if _, err := cache.ReadAt(ctx, obj, buf, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, o.files[p]) {
			t.Fatalf("%s: wrong bytes", p)
		}
	}
	want := order[:contract.FirstReadsPerClient]
	if got := src.FirstReads(); !slices.Equal(got, want) {
		t.Fatalf("first reads %q; want %q", got, want)
	}
}
