package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

func parseFaults(t *testing.T, args ...string) *FaultsOptions {
	t.Helper()
	o := &FaultsOptions{}
	parseFlags(t, o.AddFlags, args)
	return o
}

func TestFaultsValidate(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"defaults", nil, ""},
		{"unknown scenario", []string{"--scenarios", "none,flood"}, `unknown scenario "flood"`},
		{"scenario twice", []string{"--scenarios", "stop,stop"}, `"stop" twice`},
		{"one worker for a worker fault", []string{"--workers", "1", "--scenarios", "none,drop"}, "--workers"},
		{"one worker for slowdown", []string{"--workers", "1", "--scenarios", "none,slowdown"}, ""},
		{"bad size", []string{"--file-size", "big"}, "--file-size"},
		{"no timeout", []string{"--timeout", "0s"}, "--timeout"},
		{"too many clients", []string{"--clients", "1000"}, "--clients"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := parseFaults(t, append([]string{"--versitygw", exe}, tc.args...)...)
			err := o.Validate()
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	o := parseFaults(t, "--versitygw", exe, "--scenarios", "stop,none,drop")
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.ordered(), ","); got != "none,stop,drop" {
		t.Errorf("ordered() = %s, want the baseline first", got)
	}
	if o.Clients != 8 || o.Workers != 3 || o.fileSize != 32<<20 || o.bandwidth != 32e6 || o.Timeout != 180*time.Second {
		t.Errorf("defaults: %+v", o)
	}
}

func TestJudge(t *testing.T) {
	base := FaultResult{Scenario: FaultNone, Finished: true, MakespanSec: 10, FileReads: 64}
	judge(&base, nil)
	if base.Outcome != "PASS" || base.BoundSec != 18 || base.MakespanOverNone != 1 {
		t.Fatalf("baseline judged %+v", base)
	}
	tests := []struct {
		name string
		r    FaultResult
		done []FaultResult
		want string // "PASS" or a substring of the failures
	}{
		{"within the bound", FaultResult{Scenario: FaultStop, Finished: true, MakespanSec: 17.9}, []FaultResult{base}, "PASS"},
		{"over the bound", FaultResult{Scenario: FaultStop, Finished: true, MakespanSec: 18.1}, []FaultResult{base}, "over the bound 18.0 s"},
		{"not finished", FaultResult{Scenario: FaultDrop, MakespanSec: 180}, []FaultResult{base}, "did not finish"},
		{"read errors", FaultResult{Scenario: FaultDrop, Finished: true, MakespanSec: 11, ReadErrors: 2, FileReads: 64}, []FaultResult{base}, "2 of 64 file reads failed"},
		{"wrong bytes", FaultResult{Scenario: FaultRestart, Finished: true, MakespanSec: 11, WrongBytes: 1 << 20}, []FaultResult{base}, "1048576 wrong bytes"},
		{"no baseline", FaultResult{Scenario: FaultRestart, Finished: true, MakespanSec: 99}, nil, "PASS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			judge(&r, tc.done)
			got := r.Outcome
			if got == "FAIL" {
				got = strings.Join(r.Failures, "; ")
			}
			if !strings.Contains(got, tc.want) || (tc.want != "PASS" && r.Outcome != "FAIL") {
				t.Errorf("judged %s (%v), want %q", r.Outcome, r.Failures, tc.want)
			}
		})
	}
}

func TestReadVerified(t *testing.T) {
	dir := t.TempDir()
	g := NewGenerator(7, 3*ChunkSize+100)
	data, err := io.ReadAll(g)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	corrupt := bytes.Clone(data)
	corrupt[ChunkSize+5] ^= 1
	corrupt[3*ChunkSize] ^= 1
	tests := []struct {
		name      string
		path      string
		wantWrong int64
		wantErr   string
	}{
		{"intact", write("ok", data), 0, ""},
		{"two bad chunks", write("bad", corrupt), ChunkSize + 100, ""},
		{"short", write("short", data[:2*ChunkSize]), 0, "short file"},
		{"long", write("long", append(bytes.Clone(data), 'x')), 0, "longer"},
		{"missing", filepath.Join(dir, "none"), 0, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wrong, err := readVerified(context.Background(), tc.path, g.Sum())
			if wrong != tc.wantWrong || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("readVerified = %d wrong bytes, %v; want %d, an error containing %q", wrong, err, tc.wantWrong, tc.wantErr)
			}
		})
	}
}

// TestFaultsSmoke runs the harness on a tiny dataset with the real sluice
// binary and versitygw and checks what every scenario must keep: each file
// read to the end, every byte right. Times are the benchmark's business.
func TestFaultsSmoke(t *testing.T) {
	scenarios := []string{FaultNone, FaultStop, FaultDelay, FaultDrop, FaultSlowdown, FaultRestart}
	testutil.RequireRootFUSE(t)
	gw := s3server.Binary(t)
	bin := testutil.SluiceBin(t)
	tmp := t.TempDir()
	work := filepath.Join(tmp, "work")
	jsonPath := filepath.Join(tmp, "out", "faults.json")
	o := parseFaults(t, "--versitygw", gw, "--sluice", bin, "--files", "4", "--file-size", "2Mi", "--clients", "8",
		"--workers", "3", "--bandwidth", "8M", "--block-size", "1Mi", "--fault-after", "300ms", "--restart-after", "300ms",
		"--stop-for", "5s", "--timeout", "40s", "--scenarios", strings.Join(scenarios, ","),
		"--work-dir", work, "--json", jsonPath)
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := o.RunFaults(ctx, &out); err != nil {
		t.Fatalf("RunFaults: %v\n%s", err, out.String())
	}
	t.Logf("output:\n%s", out.String())
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(data), work) {
		t.Errorf("mounts left under %s", work)
	}
	var rep struct {
		Results []FaultResult `json:"results"`
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	byScenario := map[string]FaultResult{}
	for _, r := range rep.Results {
		byScenario[r.Scenario] = r
	}
	for _, scenario := range scenarios {
		t.Run(scenario, func(t *testing.T) {
			r, ok := byScenario[scenario]
			switch {
			case !ok:
				t.Fatalf("no result for %s", scenario)
			case !r.Finished:
				t.Errorf("the burst did not finish: %v %v", r.Failures, r.Errors)
			case r.ReadErrors != 0 || r.WrongBytes != 0 || r.FileReads != 32:
				t.Errorf("%d of %d file reads failed, %d wrong bytes: %v", r.ReadErrors, r.FileReads, r.WrongBytes, r.Errors)
			}
			if scenario != FaultNone && r.FaultAtSec == 0 {
				t.Errorf("the fault never hit: %s; %v", r.Fault, r.Notes)
			}
			t.Logf("%s: %s in %.1f s; %s; notes %v", r.Scenario, r.Outcome, r.MakespanSec, r.Fault, r.Notes)
		})
	}
}
