package testutil

import (
	"encoding/hex"
	"strings"
	"testing"
)

// TestReadableJoinsHexDumps: a token that a hex dump splits over lines is
// found in Readable's text, and plain text stays as it was.
func TestReadableJoinsHexDumps(t *testing.T) {
	token := "eyJhbGciOiJSUzI1NiIsImtpZCI6IlpmeUVjUG10ZEp0MzVsZW9HU1NO"
	body := append([]byte{0x6b, 0x38, 0x73, 0x00, 0x0a}, token...)
	log := "I1201 type.go:213] \"Request Body\" body=<\n" + indent(hex.Dump(body)) + " >\nI1201 next line\n"
	if strings.Contains(log, token) {
		t.Fatal("the fixture must split the token across dump lines")
	}
	if got := Readable(log); !strings.Contains(got, token) {
		t.Fatalf("Readable lost the token:\n%s", got)
	}
	if plain := "no dump here\n"; !strings.HasPrefix(Readable(plain), plain) {
		t.Fatal("Readable changed plain text")
	}
}

func indent(s string) string {
	return "\t" + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n\t") + "\n"
}
