package source

import (
	"context"
	"io"
)

type progressKey struct{}

// WithProgress returns ctx carrying fn. A source's ReadAt under ctx calls
// fn as the bytes arrive, with the count of leading bytes of its buffer
// that hold the object's bytes (the response's range and version already
// matched): counts only grow, fn runs on the reading goroutine after those
// bytes are written, and the read never writes them again. A block cache
// serves a reader waiting for part of a block from it (blockcache's
// flights) before the whole block has arrived.
func WithProgress(ctx context.Context, fn func(n int)) context.Context {
	return context.WithValue(ctx, progressKey{}, fn)
}

func progressOf(ctx context.Context) func(int) {
	fn, _ := ctx.Value(progressKey{}).(func(int))
	return fn
}

// shiftProgress is ctx with its progress callback, if any, moved by done
// bytes: for a read of the rest of a buffer whose first done bytes arrived.
func shiftProgress(ctx context.Context, done int) context.Context {
	fn := progressOf(ctx)
	if fn == nil || done == 0 {
		return ctx
	}
	return WithProgress(ctx, func(n int) { fn(done + n) })
}

// ReadFull is io.ReadFull that reports progress (WithProgress) after each
// read from r: the way a source reads a response body into its buffer.
func ReadFull(ctx context.Context, r io.Reader, buf []byte) (int, error) {
	fn := progressOf(ctx)
	if fn == nil {
		return io.ReadFull(r, buf)
	}
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if m > 0 {
			fn(n)
		}
		if err != nil {
			if n == len(buf) {
				return n, nil
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
	}
	return n, nil
}
