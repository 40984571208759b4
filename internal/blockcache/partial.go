package blockcache

import "context"

// BlockRangeReader is a source that answers part of a block by itself,
// routed like the whole block: the cache workers (cacheserver.Source asks
// the block's worker, which answers from its cache, or from its fetch of
// the block as the bytes arrive). A cache over such a source also asks it
// for the bytes a reader wants when that reader starts the block's fetch,
// so the reader need not wait for the whole block.
type BlockRangeReader interface {
	ReadBlockRange(ctx context.Context, path, version string, p []byte, blockOff, inOff int64) error
}

// rangeReaderOf is g's BlockRangeReader, nil when it has none.
func rangeReaderOf(g Getter) BlockRangeReader {
	switch g := g.(type) {
	case OriginGetter:
		r, _ := g.Source.(BlockRangeReader)
		return r
	case BlockRangeReader:
		return g
	}
	return nil
}

// fetchPart reads dst, the bytes at inOff of block b, which no tier of
// this cache holds, through the block's flight: as soon as those bytes
// have arrived when the tier below streams (flights.waitFor), else once
// the block has. When this read starts the flight, the tier below
// answers ranges and ranged is set, the range is asked for at once as
// well; the first answer serves the reader, and the flight goes on for the
// cache.
func (c *Cache) fetchPart(ctx context.Context, b BlockRef, key string, dst []byte, inOff int64, l *Lease, ranged bool) error {
	end := inOff + int64(len(dst))
	f, start := c.flights.join(key, false, c.run(b, key, false, c.get))
	if !start || !ranged || c.ranges == nil || int64(len(dst)) >= b.Len() {
		buf, _, err := c.flights.waitFor(ctx, f, int(end))
		if err != nil {
			return err
		}
		l.add(buf, buf.data[inOff:end])
		return nil
	}
	// The range goroutine writes dst until it returns: it is waited for
	// before dst is handed back, whichever answer serves the reader.
	wctx, stopWait := context.WithCancel(ctx)
	defer stopWait()
	rctx, stopRange := context.WithCancel(ctx)
	defer stopRange()
	answer := make(chan error, 1)
	go func() {
		err := c.ranges.ReadBlockRange(rctx, b.Object.Path, b.Object.Version, dst, b.Offset(), inOff)
		if err == nil {
			stopWait()
		}
		answer <- err
	}()
	buf, _, err := c.flights.waitFor(wctx, f, int(end))
	if err == nil {
		stopRange()
		<-answer
		l.add(buf, buf.data[inOff:end])
		return nil
	}
	if rerr := <-answer; rerr == nil {
		c.cfg.Metrics.RangeServed()
		l.add(nil, dst)
		return nil
	}
	return err
}
