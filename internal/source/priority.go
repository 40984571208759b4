package source

import "context"

// Readahead marking: a request that no reader waits for yet carries a mark
// in its context, so every queue below it — the block cache's fetch slots,
// the origin's Slots, a cache worker (told by a request header) — serves the
// requests someone waits for first.
type readaheadKey struct{}

// WithReadahead marks ctx as belonging to a readahead request.
func WithReadahead(ctx context.Context) context.Context {
	return context.WithValue(ctx, readaheadKey{}, true)
}

// IsReadahead reports whether ctx belongs to a readahead request.
func IsReadahead(ctx context.Context) bool {
	v, _ := ctx.Value(readaheadKey{}).(bool)
	return v
}
