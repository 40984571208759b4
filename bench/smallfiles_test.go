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

// TestSmallFilesSmoke runs the small-file benchmark at a tiny size: every
// row measured, every byte checked, nothing left mounted or on disk.
func TestSmallFilesSmoke(t *testing.T) {
	testutil.RequireRootFUSE(t)
	tmp := t.TempDir()
	work, jsonPath := filepath.Join(tmp, "work"), filepath.Join(tmp, "smallfiles.json")
	o := &SmallFilesOptions{}
	fs := pflag.NewFlagSet("smallfiles", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--versitygw", s3server.Binary(t), "--sluice", testutil.SluiceBin(t), "--files", "300",
		"--dirs", "10", "--big-dir", "500", "--readers", "4", "--drop-caches=false", "--work-dir", work, "--json", jsonPath}); err != nil {
		t.Fatal(err)
	}
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
	var rep SmallFilesReport
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	want := []string{"direct, warm", "sluice cold", "sluice warm (same mount)",
		"sluice --small-files cold", "sluice --small-files warm (same mount)", "rclone"}
	if len(rep.Rows) != len(want) {
		t.Fatalf("rows %+v, want %q", rep.Rows, want)
	}
	for i, r := range rep.Rows {
		switch {
		case r.Name != want[i]:
			t.Errorf("row %d is %q, want %q", i, r.Name, want[i])
		case r.Name == "rclone":
			if r.Skipped == "" {
				t.Error("the rclone row ran without --rclone")
			}
		case r.Error != "" || r.StatPerSec <= 0 || r.ReadPerSec <= 0 || r.ListSec <= 0:
			t.Errorf("row %s: %+v", r.Name, r)
		}
	}
	if rep.Rows[2].CPUSec <= 0 || rep.MinioListSec <= 0 {
		t.Errorf("mount CPU %.2f s, minio listing %.2f s: want both measured", rep.Rows[2].CPUSec, rep.MinioListSec)
	}
}

func TestSmallFilesValidate(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no versitygw", nil, "--versitygw"},
		{"bad size", []string{"--file-size", "big"}, "--file-size"},
		{"more dirs than files", []string{"--files", "10", "--dirs", "20"}, "--dirs 20"},
		{"no readers", []string{"--readers", "0"}, "--readers 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := &SmallFilesOptions{}
			fs := pflag.NewFlagSet("smallfiles", pflag.ContinueOnError)
			o.AddFlags(fs)
			args := tc.args
			if tc.name != "no versitygw" {
				args = append([]string{"--versitygw", "/bin/sh", "--sluice", "/bin/sh"}, args...)
			}
			if err := fs.Parse(args); err != nil {
				t.Fatal(err)
			}
			if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate: %v; want an error naming %s", err, tc.want)
			}
		})
	}
}
