package source

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
	"k8s.io/klog/v2"
)

// s3PageSize is the number of entries of one page when the server's page
// size is its default.
const s3PageSize = 1000

var _ Pager = (*s3Source)(nil)

func (s *s3Source) List(ctx context.Context, dir string) ([]Entry, error) {
	var (
		out   []Entry
		index = map[string]int{} // name → position in out
	)
	err := s.ListPages(ctx, dir, func(page []Entry) error {
		for _, e := range page {
			if i, dup := index[e.Name]; dup {
				if !e.IsDir {
					out[i] = e
				}
				continue
			}
			index[e.Name] = len(out)
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ListPages lists dir a page of keys at a time: each page's objects, then
// its prefixes (as minio-go hands them out). A key "x" sorts before the
// prefix "x/", so a name that is both comes first as the object.
func (s *s3Source) ListPages(ctx context.Context, dir string, page func([]Entry) error) error {
	if err := checkPath(dir); err != nil {
		return err
	}
	pfx := s.dirPrefix(dir)
	noOwner := false
	size := s.maxKeys
	if size <= 0 {
		size = s3PageSize
	}
	var (
		cur          = make([]Entry, 0, size)
		listed       int
		sawMarker    bool
		skipped      int
		firstSkipped string
	)
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		listed += len(cur)
		p := cur
		cur = make([]Entry, 0, size)
		if err := page(p); err != nil {
			return &errPage{err}
		}
		return nil
	}
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{
		Prefix:     pfx,
		MaxKeys:    s.maxKeys,
		FetchOwner: &noOwner,
	}) {
		if obj.Err != nil {
			return s.wrap("list", pfx, obj.Err)
		}
		name := strings.TrimPrefix(obj.Key, pfx)
		if name == "" {
			sawMarker = true // the directory marker object "dir/"
			continue
		}
		e := Entry{Name: name}
		if strings.HasSuffix(name, "/") { // a common prefix
			e = Entry{Name: strings.TrimSuffix(name, "/"), IsDir: true}
		} else {
			e.Size = obj.Size
			e.ModTime = obj.LastModified
			e.Version = objectVersion(obj.ETag, obj.LastModified, obj.Size)
		}
		if !ValidName(e.Name) {
			if skipped++; skipped == 1 {
				firstSkipped = obj.Key
			}
			continue
		}
		if cur = append(cur, e); len(cur) == size {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if skipped > 0 {
		klog.InfoS("Skipped S3 keys whose names cannot be file names (empty or dot elements, NUL, longer than 255 bytes)",
			"source", s.id, "dir", dir, "skipped", skipped, "first", fmt.Sprintf("%q", firstSkipped))
	}
	// ListObjectsIter ends silently when ctx is cancelled.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 list s3://%s/%s: %w", s.bucket, pfx, err)
	}
	if listed+len(cur) == 0 && dir != "" && !sawMarker {
		return fmt.Errorf("s3 list s3://%s/%s: no such directory: %w", s.bucket, pfx, ErrNotFound)
	}
	return flush()
}
