package cachectl

import (
	"testing"
	"time"
)

func TestScalerSeries(t *testing.T) {
	const mb = 1e6
	cfg := ScalerConfig{MinWorkers: 1, MaxWorkers: 8, TargetPerWorker: 100 * mb, ScaleDownDelay: 30 * time.Second}
	zero := cfg
	zero.MinWorkers = 0
	type step struct {
		at      time.Duration // since the series start
		demand  float64
		clients int
		want    int32
	}
	tests := []struct {
		name  string
		cfg   ScalerConfig
		start int32
		steps []step
	}{
		{"burst scales up at once", cfg, 1, []step{{0, 0, 0, 1}, {5 * time.Second, 650 * mb, 1, 7}, {10 * time.Second, 2000 * mb, 1, 8}}},
		{"steady demand holds", cfg, 3, []step{{0, 250 * mb, 1, 3}, {60 * time.Second, 250 * mb, 1, 3}, {120 * time.Second, 290 * mb, 1, 3}}},
		{"decay waits for the delay", cfg, 6, []step{
			{0, 550 * mb, 1, 6}, {5 * time.Second, 100 * mb, 1, 6}, {20 * time.Second, 100 * mb, 1, 6},
			{36 * time.Second, 100 * mb, 1, 1}}},
		{"flapping never scales down", cfg, 4, []step{
			{0, 350 * mb, 1, 4}, {10 * time.Second, 50 * mb, 1, 4}, {20 * time.Second, 380 * mb, 1, 4},
			{30 * time.Second, 50 * mb, 1, 4}, {40 * time.Second, 400 * mb, 1, 4}, {55 * time.Second, 50 * mb, 1, 4}}},
		{"never below min", cfg, 2, []step{{0, 0, 0, 2}, {time.Hour, 0, 0, 1}, {2 * time.Hour, 0, 0, 1}}},
		{"a waiting client wakes a scaled-to-zero dataset", zero, 0, []step{{0, 0, 0, 0}, {time.Second, 0, 1, 1}, {50 * time.Second, 0, 0, 0}}},
		{"scale from zero on any demand", zero, 0, []step{{0, 0, 0, 0}, {time.Second, 1, 1, 1}, {2 * time.Second, 0, 0, 1}, {40 * time.Second, 0, 0, 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s Scaler
			t0 := time.Unix(1000, 0)
			current := tc.start
			for i, st := range tc.steps {
				current = s.Desired(tc.cfg, t0.Add(st.at), current, st.demand, st.clients)
				if current != st.want {
					t.Fatalf("step %d (t=%s, demand %.0f MB/s): %d workers, want %d", i, st.at, st.demand/mb, current, st.want)
				}
			}
		})
	}
}

func TestServedRate(t *testing.T) {
	t0 := time.Unix(100, 0)
	tests := []struct {
		name  string
		prev  servedSample
		bytes int64
		now   time.Time
		want  float64
	}{
		{"no previous sample", servedSample{}, 1 << 30, t0, 0},
		{"100 MB in 10 s", servedSample{bytes: 50e6, at: t0}, 150e6, t0.Add(10 * time.Second), 10e6},
		{"a worker restarted (counters went back)", servedSample{bytes: 50e6, at: t0}, 10e6, t0.Add(10 * time.Second), 0},
		{"same instant", servedSample{bytes: 1, at: t0}, 5, t0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.prev.rate(tc.bytes, tc.now); got != tc.want {
				t.Errorf("rate = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPerClientRate: a coming client counts at the highest throughput per
// client seen within clientRateMemory, and at a quarter of a worker before
// any was seen.
func TestPerClientRate(t *testing.T) {
	const mb = 1e6
	cfg := ScalerConfig{TargetPerWorker: 100 * mb}
	type seen struct {
		at      time.Duration
		demand  float64
		clients int
	}
	tests := []struct {
		name string
		seen []seen
		want float64
	}{
		{"unmeasured", nil, 25 * mb},
		{"idle clients say nothing", []seen{{0, 0, 8}}, 25 * mb},
		{"the mean of the clients", []seen{{0, 400 * mb, 8}}, 50 * mb},
		{"the highest stands", []seen{{0, 400 * mb, 8}, {time.Minute, 80 * mb, 8}}, 50 * mb},
		{"an hour later a lower one replaces it", []seen{{0, 400 * mb, 8}, {61 * time.Minute, 80 * mb, 8}}, 10 * mb},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s Scaler
			t0 := time.Unix(1000, 0)
			for _, o := range tc.seen {
				s.observe(t0.Add(o.at), o.demand, o.clients)
			}
			if got := s.perClient(cfg); got != tc.want {
				t.Fatalf("perClient = %.0f, want %.0f", got, tc.want)
			}
		})
	}
}
