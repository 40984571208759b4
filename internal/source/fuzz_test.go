package source

import (
	"bytes"
	"errors"
	"net/url"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// secret stands in for a credential: plain enough to be valid anywhere in
// a URL, distinct enough that Parse can only show it by showing the secret.
const secret = "pwAAAA1111"

// parsed is what Parse shows of a URL: the source's ID, the error text
// and the log lines (without klog's headers).
type parsed struct {
	id, err, logs string
}

// klogCapture sends klog's output to a buffer while the fuzz target runs.
func klogCapture(f *testing.F) *bytes.Buffer {
	var buf bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&buf)
	f.Cleanup(func() { klog.LogToStderr(true) })
	return &buf
}

// parseShown parses raw and returns what it shows, reading (and emptying)
// the captured log.
func parseShown(t *testing.T, raw string, logs *bytes.Buffer) parsed {
	logs.Reset()
	src, err := Parse(raw, Options{})
	var p parsed
	if err != nil {
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("Parse(%q) error %q does not wrap ErrInvalid", raw, err)
		}
		p.err = err.Error()
	} else {
		if src.ID() == "" {
			t.Fatalf("Parse(%q) gave a source with an empty ID", raw)
		}
		p.id = src.ID()
	}
	for line := range strings.Lines(logs.String()) {
		if _, msg, ok := strings.Cut(line, "] "); ok {
			p.logs += msg
		}
	}
	return p
}

// withPassword is u with userinfo password pw (user "user" when u has
// none).
func withPassword(u url.URL, pw string) string {
	name := "user"
	if u.User != nil && u.User.Username() != "" {
		name = u.User.Username()
	}
	u.User = url.UserPassword(name, pw)
	return u.String()
}

// withSignature is u with a presigned URL's signature sig in its query.
func withSignature(u url.URL, sig string) string {
	if u.RawQuery != "" {
		u.RawQuery += "&"
	}
	u.RawQuery += "X-Amz-Signature=" + sig
	return u.String()
}

// withEndpointPassword is u with password pw in its endpoint query
// parameter's userinfo; ok is false when u has no endpoint URL to change.
func withEndpointPassword(u url.URL, pw string) (string, bool) {
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil || len(q["endpoint"]) != 1 {
		return "", false
	}
	ep, err := url.Parse(q.Get("endpoint"))
	if err != nil {
		return "", false
	}
	q.Set("endpoint", withPassword(*ep, pw))
	u.RawQuery = q.Encode()
	return u.String(), true
}

// FuzzParse parses fuzzed source URLs. Parse must not panic, its errors
// must wrap ErrInvalid, and a source must have an ID. Then the URL gets a
// secret in each place a URL carries one — the userinfo password, a
// presigned URL's query signature, the password of an s3 endpoint
// parameter — and Parse must show it nowhere: not in the ID, the error
// text or the log lines. The seed corpus is testdata/fuzz/FuzzParse plus
// the cases below.
func FuzzParse(f *testing.F) {
	for _, raw := range []string{
		"s3://bkt/prefix?region=eu-west-1&pathStyle=true",
		"s3://bkt?endpoint=http://minio:9000",
		"https://user:pw@host/path/object.bin?X-Amz-Credential=AK&X-Amz-Signature=sig#frag",
		"file:///tmp",
		"file://localhost/nonexistent",
		"host/object?sig=abc",
		"ftp://user:pw@host/x",
		"%zz://x",
	} {
		f.Add(raw)
	}
	logs := klogCapture(f)
	f.Fuzz(func(t *testing.T, raw string) {
		parseShown(t, raw, logs)
		u, err := url.Parse(raw)
		if err != nil || strings.Contains(raw, secret) {
			return // no URL to put the secret in, or one that shows it anyway
		}
		checkHidden(t, "userinfo password", withPassword(*u, secret), logs)
		checkHidden(t, "query signature", withSignature(*u, secret), logs)
		if withEP, ok := withEndpointPassword(*u, secret); ok {
			checkHidden(t, "endpoint password", withEP, logs)
		}
	})
}

// checkHidden fails when Parse of raw, which holds the secret where says,
// shows it.
func checkHidden(t *testing.T, where, raw string, logs *bytes.Buffer) {
	p := parseShown(t, raw, logs)
	if strings.Contains(p.id+"\n"+p.err+"\n"+p.logs, secret) {
		t.Fatalf("Parse(%q) shows the %s: %+v", raw, where, p)
	}
}
