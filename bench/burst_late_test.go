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

	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/s3server"
)

// TestBurstWorkersJoinLate runs a small real burst in the cold-start
// mode: two workers join after the clients' first read and take what the
// first worker holds of their blocks from it (their peer). Without peer
// reads this shape read the origin 1.3× the dataset; what comes twice
// with them is the blocks that the joining worker and a client not yet
// routing to it asked for at once.
func TestBurstWorkersJoinLate(t *testing.T) {
	testutil.RequireRootFUSE(t)
	tmp := t.TempDir()
	jsonPath := filepath.Join(tmp, "burst.json")
	o := &BurstOptions{}
	parseFlags(t, o.AddFlags, []string{"--versitygw", s3server.Binary(t), "--sluice", testutil.SluiceBin(t),
		"--files", "4", "--file-size", "8Mi", "--clients", "2", "--workers", "3", "--bandwidth", "8M",
		"--block-size", "1Mi", "--modes", ModeColdStart, "--cold-join", "1s", "--work-dir", filepath.Join(tmp, "work"),
		"--json", jsonPath})
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := o.RunBurst(ctx, &out); err != nil {
		t.Fatalf("RunBurst: %v\n%s", err, out.String())
	}
	t.Logf("output:\n%s", out.String())
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct{ Results []BurstResult }
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 1 {
		t.Fatalf("%d results, want 1", len(rep.Results))
	}
	r := rep.Results[0]
	switch {
	case !r.Verified:
		t.Error("the clients' bytes were not verified")
	case !strings.Contains(r.Note, "serving from"):
		t.Errorf("note %q: the other workers did not join during the burst", r.Note)
	case r.Counters == nil || len(r.Counters.WorkerOriginBytes) != 3:
		t.Errorf("counters %+v, want 3 workers'", r.Counters)
	case r.Counters.WorkerPeerBytes[1]+r.Counters.WorkerPeerBytes[2] == 0:
		t.Errorf("the joining workers took nothing from their peer (counters %+v)", *r.Counters)
	case r.OriginRatio > 1.25:
		t.Errorf("the origin sent %.2f× the dataset with workers joining late, want about once (counters %+v)", r.OriginRatio, *r.Counters)
	}
}
