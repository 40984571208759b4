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
// mode: two workers join after the clients' first read, the mounts route
// their blocks to them once a probe finds them up, and the origin still
// serves the dataset about once (a joining worker asks its peer before
// the origin). The files are longer than the mounts' readahead (8 blocks
// of each of 2 files at once), so blocks are still to be asked for when
// the joiners are back; with 4 files of 8 blocks every block was asked
// for at the first read and the joiners served nothing. Which of their
// blocks the first worker holds when they ask is timing; the peer reads
// themselves are tested in internal/cacheserver.
func TestBurstWorkersJoinLate(t *testing.T) {
	testutil.RequireRootFUSE(t)
	tmp := t.TempDir()
	jsonPath := filepath.Join(tmp, "burst.json")
	o := &BurstOptions{}
	parseFlags(t, o.AddFlags, []string{"--versitygw", s3server.Binary(t), "--sluice", testutil.SluiceBin(t),
		"--files", "2", "--file-size", "32Mi", "--clients", "2", "--workers", "3", "--bandwidth", "8M",
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
	case joinerBytes(r.Counters) == 0:
		t.Errorf("the joining workers served nothing (counters %+v)", *r.Counters)
	case r.OriginRatio > 1.25:
		t.Errorf("the origin sent %.2f× the dataset with workers joining late, want about once (counters %+v)", r.OriginRatio, *r.Counters)
	}
}

// joinerBytes is what the workers after the first fetched, from the
// origin or their peer: nothing means no mount routed to them.
func joinerBytes(c *BurstCounters) int64 {
	var n int64
	for w := 1; w < len(c.WorkerOriginBytes); w++ {
		n += c.WorkerOriginBytes[w] + c.WorkerPeerBytes[w]
	}
	return n
}
