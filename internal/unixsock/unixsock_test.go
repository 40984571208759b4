package unixsock

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLongPaths: a socket whose path is longer than a sockaddr_un holds is
// listened on, dialed and carries bytes, like a short one; it is at the
// long path.
func TestLongPaths(t *testing.T) {
	for _, tc := range []struct {
		name  string
		depth int // path components of 20 bytes under the temp dir
	}{
		{"short", 0},
		{"longer than sockaddr_un", 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for i := range tc.depth {
				dir = filepath.Join(dir, strings.Repeat(string(rune('a'+i)), 20))
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "stats.sock")
			if tc.depth > 0 && len(path) <= maxPath {
				t.Fatalf("path %d bytes: not long enough for the test", len(path))
			}
			ln, err := Listen(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
				t.Fatalf("no socket at %s: %v", path, err)
			}
			go func() {
				c, err := ln.Accept()
				if err == nil {
					c.Write([]byte("hello"))
					c.Close()
				}
			}()
			c, err := Dial(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "hello" {
				t.Fatalf("read %q, %v", got, err)
			}
			if _, ok := c.(*net.UnixConn); !ok {
				t.Fatalf("Dial returned a %T, not a *net.UnixConn", c)
			}
			if err := ln.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Fatalf("socket left at %s after Close: %v", path, err)
			}
		})
	}
}
