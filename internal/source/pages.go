package source

import (
	"context"
	"fmt"
)

// Pager is a Source that hands out a directory's listing in pages, as the
// origin returns them, so a reader can use the first entries of a large
// directory before the last ones are listed.
type Pager interface {
	// ListPages calls page with the entries of directory dir, a page at a
	// time, in the origin's order (not necessarily sorted by name). A name
	// that is both an object and a directory (S3 key "x" and keys below
	// "x/") comes twice, the object first; after a retry the pages start
	// again. So a consumer keeps the first entry of a name, or the file
	// where a directory came first. page's slice is the consumer's to keep. An error of page ends the listing with that error.
	// ErrNotFound if dir does not exist.
	ListPages(ctx context.Context, dir string, page func([]Entry) error) error
}

// ListPages lists dir through src's pages when it has them (Pager), and
// as one page otherwise.
func ListPages(ctx context.Context, src Source, dir string, page func([]Entry) error) error {
	if p, ok := src.(Pager); ok {
		return p.ListPages(ctx, dir, page)
	}
	entries, err := src.List(ctx, dir)
	if err != nil {
		return err
	}
	return page(entries)
}

// errPage marks an error returned by a consumer's page function, which
// no retry may repeat.
type errPage struct{ err error }

func (e *errPage) Error() string { return fmt.Sprintf("listing consumer: %v", e.err) }
func (e *errPage) Unwrap() error { return e.err }
