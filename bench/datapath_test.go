package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// parseOptions builds Options from command-line flags, as the command does.
func parseOptions(t *testing.T, args ...string) *Options {
	t.Helper()
	o := &Options{}
	parseFlags(t, o.AddFlags, args)
	return o
}

// parseFlags registers flags with add and parses args. --sluice defaults
// to the sluice beside the running binary; a test binary has none, so one
// is named first (a later --sluice wins).
func parseFlags(t *testing.T, add func(*pflag.FlagSet), args []string) {
	t.Helper()
	fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	add(fs)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse(append([]string{"--sluice", exe}, args...)); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	full := t.TempDir()
	plain := filepath.Join(full, "f")
	os.WriteFile(plain, nil, 0o600)
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"defaults", []string{"--versitygw", exe}, ""},
		{"no versitygw", nil, "--versitygw is required"},
		{"versitygw not executable", []string{"--versitygw", plain}, "not an executable"},
		{"sluice missing", []string{"--versitygw", exe, "--sluice", "/nope"}, "--sluice"},
		{"bad size", []string{"--versitygw", exe, "--big-size", "huge"}, "--big-size"},
		{"size below 1Mi", []string{"--versitygw", exe, "--small-size", "1Ki"}, "at least 1Mi"},
		{"range not whole MiB", []string{"--versitygw", exe, "--get-range", "1536Ki"}, "multiple of 1Mi"},
		{"no readers", []string{"--versitygw", exe, "--small-count", "0"}, "--small-count"},
		{"bad concurrency", []string{"--versitygw", exe, "--get-concurrency", "8,0"}, "--get-concurrency 0"},
		{"relative work dir", []string{"--versitygw", exe, "--work-dir", "rel"}, "absolute"},
		{"work dir not empty", []string{"--versitygw", exe, "--work-dir", full}, "not empty"},
		{"missing rclone is not an error", []string{"--versitygw", exe, "--rclone", "/nope/rclone"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := parseOptions(t, tc.args...).Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	o := parseOptions(t, "--versitygw", exe, "--rclone", "/nope/rclone")
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Sluice != exe || o.bigSize != 2<<30 || o.smallSize != 256<<20 || o.SmallCount != 8 ||
		!strings.Contains(o.rcloneSkip, "/nope/rclone") {
		t.Errorf("defaults: sluice %q, sizes %d/%d×%d, rclone skip %q", o.Sluice, o.bigSize, o.smallSize, o.SmallCount, o.rcloneSkip)
	}
}

// TestDatapathSmoke runs the whole benchmark at tiny sizes, without rclone,
// through the real sluice binary and versitygw.
func TestDatapathSmoke(t *testing.T) {
	testutil.RequireRootFUSE(t)
	gw := s3server.Binary(t)
	bin := testutil.SluiceBin(t)
	tmp := t.TempDir()
	work := filepath.Join(tmp, "work")
	jsonPath := filepath.Join(tmp, "out", "datapath.json")
	o := parseOptions(t, "--versitygw", gw, "--sluice", bin, "--big-size", "8Mi", "--small-size", "2Mi",
		"--small-count", "2", "--get-concurrency", "2,4", "--work-dir", work, "--json", jsonPath)
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := o.Run(ctx, &out); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	t.Logf("output:\n%s", out.String())

	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Errorf("work dir %s left behind (%v)", work, err)
	}
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(data), work) {
		t.Errorf("mounts left under %s", work)
	}
	var rep DatapathReport
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"direct": true, "get": true, "sluice-cold": true, "sluice-again": true, "sluice-warm": true,
		"sluice-warm-nopt": true, "sluice-cold-buffered": true, "sluice-warm-buffered": true, "loopback": true,
		"workers": true, "workers-tls": true, "rclone-cold": false, "rclone-warm": false, "s3fs-cold": false, "s3fs-warm": false}
	if len(rep.Rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(rep.Rows), len(want))
	}
	for _, r := range rep.Rows {
		measured, ok := want[r.Key]
		switch {
		case !ok:
			t.Errorf("unexpected row %q", r.Key)
		case !measured && r.Skipped == "":
			t.Errorf("row %s not skipped without rclone and s3fs", r.Key)
		case measured && (r.Error != "" || r.W1 == nil || r.W2 == nil):
			t.Errorf("row %s: error %q, measurements %v %v", r.Key, r.Error, r.W1, r.W2)
		case measured && (r.W1.Bytes != 8<<20 || r.W2.Bytes != 4<<20 || r.W1.MBps <= 0):
			t.Errorf("row %s read %d and %d bytes (%.0f MB/s), want 8Mi and 4Mi", r.Key, r.W1.Bytes, r.W2.Bytes, r.W1.MBps)
		}
	}
	// 12 ratio targets of 6 rows on two workloads, 6 limits (CPU, RSS).
	if len(rep.Targets) != 18 || rep.Env.Kernel == "" || rep.Env.Versions["sluice"] == "" {
		t.Errorf("targets %d (want 18), env %+v", len(rep.Targets), rep.Env)
	}
	for _, r := range rep.Rows {
		if r.W1 != nil && strings.HasPrefix(r.Key, "sluice-cold") && r.CPUPerGiB <= 0 {
			t.Errorf("row %s has no CPU-seconds per GiB", r.Key)
		}
	}
	if !strings.Contains(out.String(), "sluice warm (passthrough)") {
		t.Errorf("table missing from the output")
	}
}
