package bench

import "testing"

func TestOriginIdle(t *testing.T) {
	const bw = 10_000_000 // 1 MB a tick at full speed; under 100 KB is idle
	tests := []struct {
		name   string
		deltas []int64
		bw     int64
		want   float64
	}{
		{"busy throughout", []int64{1e6, 1e6, 1e6, 1e6}, bw, 0},
		{"start-up and tail are outside the window", []int64{0, 0, 1e6, 1e6, 0, 0}, bw, 0},
		{"a dip at each file boundary", []int64{1e6, 5e4, 1e6, 0, 1e6}, bw, 0.4},
		{"no cap: a tenth of the busiest tick", []int64{4e6, 3e5, 4e6, 5e5}, 0, 0.25},
		{"nothing sent", []int64{0, 0}, bw, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := originIdle(tc.deltas, tc.bw); got != tc.want {
				t.Errorf("originIdle(%v) = %v, want %v", tc.deltas, got, tc.want)
			}
		})
	}
}
