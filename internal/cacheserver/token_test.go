package cacheserver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTokenFileRewrittenInPlace: a token file that reads empty for a
// moment (rewritten in place) keeps the last token; an empty file at the
// start is an error that names it.
func TestTokenFileRewrittenInPlace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pool, err := NewPool(context.Background(), PoolConfig{URLs: []string{"http://127.0.0.1:1"}, TokenFile: p, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, later, later)
	if tok, err := pool.readToken(); tok != "first" || err != nil {
		t.Errorf("while the file is empty: token %q, %v; want the last one", tok, err)
	}
	if err := os.WriteFile(p, []byte("second\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, later, later) // the same mtime as the empty read: it must be read again
	if tok, err := pool.readToken(); tok != "second" || err != nil {
		t.Errorf("after the rewrite: token %q, %v; want the new one", tok, err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewPool(context.Background(), PoolConfig{URLs: []string{"http://127.0.0.1:1"}, TokenFile: empty, Insecure: true}); err == nil || !strings.Contains(err.Error(), empty) {
		t.Errorf("a pool with an empty token file: %v, want an error naming it", err)
	}
}
