package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestTargetMet(t *testing.T) {
	tests := []struct {
		target Target
		ratio  float64
		want   bool
		str    string
	}{
		{Target{">=", 0.9}, 0.95, true, "≥ 0.90"},
		{Target{">=", 0.9}, 0.9, true, "≥ 0.90"},
		{Target{">=", 0.9}, 0.89, false, "≥ 0.90"},
		{Target{"<", 1}, 0.99, true, "< 1.00"},
		{Target{"<", 1}, 1, false, "< 1.00"},
		{Target{"?", 1}, 0, false, "? 1.00"},
	}
	for _, tc := range tests {
		if got := tc.target.Met(tc.ratio); got != tc.want {
			t.Errorf("%v.Met(%v) = %v, want %v", tc.target, tc.ratio, got, tc.want)
		}
		if got := tc.target.String(); got != tc.str {
			t.Errorf("String() = %q, want %q", got, tc.str)
		}
	}
}

func m(mbps float64) *Measurement { return &Measurement{MBps: mbps, Bytes: 1e6, Seconds: 1 / mbps} }

func testRows() []*Row {
	return []*Row{
		{Key: "direct", Name: "direct", W1: m(1000), W2: m(2000)},
		{Key: "get", Name: "parallel GET", Reference: "direct", W1: m(500), W2: m(1000)},
		{Key: "cold", Name: "cold", Reference: "get", Target: &Target{">=", 0.9}, W1: m(460), W2: m(890)},
		{Key: "rclone", Name: "rclone", Reference: "cold", Target: &Target{"<", 1}, W1: m(400), W2: m(900)},
		{Key: "skipped", Name: "skipped", Reference: "cold", Target: &Target{"<", 1}, Skipped: "no rclone"},
		{Key: "orphan", Name: "orphan", Reference: "missing", Target: &Target{">=", 1}, W1: m(1), W2: m(1)},
	}
}

func TestEvaluate(t *testing.T) {
	rows := testRows()
	results := evaluate(rows)
	wantRatios := map[string][2]float64{
		"direct": {0, 0}, "get": {0.5, 0.5}, "cold": {0.92, 0.89}, "rclone": {400.0 / 460, 900.0 / 890},
		"orphan": {0, 0},
	}
	for _, r := range rows {
		want, ok := wantRatios[r.Key]
		if !ok {
			continue
		}
		for i, m := range r.workloads() {
			if d := m.Ratio - want[i]; d > 1e-9 || d < -1e-9 {
				t.Errorf("%s W%d ratio %v, want %v", r.Key, i+1, m.Ratio, want[i])
			}
		}
	}
	if rows[1].W1.Pass != nil {
		t.Error("a row without target got a pass/fail")
	}
	type res struct {
		row, w string
		pass   bool
	}
	var got []res
	for _, r := range results {
		got = append(got, res{r.Row, r.Workload, r.Pass})
	}
	want := []res{{"cold", "W1", true}, {"cold", "W2", false}, {"rclone", "W1", true}, {"rclone", "W2", false}}
	if len(got) != len(want) {
		t.Fatalf("results %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("result %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestDatapathTable(t *testing.T) {
	rows := testRows()
	rows[3].Notes = []string{"a note"}
	rows = append(rows, &Row{Key: "broken", Name: "broken", Error: "mount failed\nlong output"})
	rep := &DatapathReport{BigSize: 2 << 30, SmallSize: 256 << 20, SmallCount: 8, Rows: rows,
		Env: CollectEnv(time.Now(), nil), Seconds: 42}
	rep.Targets = evaluate(rows)
	var buf bytes.Buffer
	if err := datapathTable(rep).Render(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"W1: 1 reader × 2Gi file; W2: 8 readers × 256Mi files",
		"cold              460  0.92      890  0.89  parallel GET  ≥ 0.90  pass  FAIL\n",
		"skipped       skipped        skipped        cold          < 1.00\n",
		"broken          error          error\n",
		"rclone: a note",
		"skipped: skipped: no rclone",
		"broken: ERROR: mount failed\n",
		"targets met: 2 of 4; run took 42s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "long output") {
		t.Errorf("table shows more than an error's first line:\n%s", out)
	}
}

func TestTableRender(t *testing.T) {
	tb := &Table{
		Title:   "title",
		Columns: []Column{{Name: "name"}, {Name: "n", Right: true}, {Name: "last"}},
		Rows:    [][]string{{"a", "1", "x"}, {"ünïcode", "12345"}, {"b", "22", ""}},
		Notes:   []string{"note"},
	}
	var buf bytes.Buffer
	if err := tb.Render(&buf); err != nil {
		t.Fatal(err)
	}
	want := "title\n" +
		"name         n  last\n" +
		"-------  -----  ----\n" +
		"a            1  x\n" +
		"ünïcode  12345\n" +
		"b           22\n" +
		"note\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestFormat(t *testing.T) {
	sizes := map[int64]string{2 << 30: "2Gi", 256 << 20: "256Mi", 1536 << 20: "1536Mi", 1000: "1000B", 8 << 10: "8Ki"}
	for n, want := range sizes {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
	rates := map[float64]string{1234.56: "1235", 100: "100", 99.94: "99.9", 0.5: "0.5"}
	for v, want := range rates {
		if got := formatMBps(v); got != want {
			t.Errorf("formatMBps(%v) = %q, want %q", v, got, want)
		}
	}
	bytesCases := map[int64]string{512: "512 B", 1536: "1.5 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"}
	for n, want := range bytesCases {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
