package testutil

import (
	"regexp"
	"strings"
)

// hexdumpLine is a line of hex.Dump output (client-go logs binary request
// and answer bodies so): offset, hex bytes, |printable column|.
var hexdumpLine = regexp.MustCompile(`^\s*[0-9a-f]{8}  (?:[0-9a-f ]{2} ){8} (?:[0-9a-f ]{2} ){8} \|(.{1,16})\|$`)

// Readable is log text with the printable columns of every hex dump in it
// joined up and appended, so that a secret split across dump lines is
// found by a plain substring search.
func Readable(log string) string {
	var joined strings.Builder
	for _, line := range strings.Split(log, "\n") {
		if m := hexdumpLine.FindStringSubmatch(line); m != nil {
			joined.WriteString(m[1])
		} else if joined.Len() > 0 && !strings.HasSuffix(joined.String(), "\n") {
			joined.WriteString("\n")
		}
	}
	return log + "\n" + joined.String()
}
