package bench

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		name string
		in   []time.Duration
		p    float64
		want float64
	}{
		{"empty", nil, 0.5, 0},
		{"one", ms(7), 0.99, 7},
		{"median of odd", ms(5, 1, 3), 0.5, 3},
		{"p99 of 100 is the 99th", ms(seq(100)...), 0.99, 99},
		{"p50 of 100", ms(seq(100)...), 0.50, 50},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.in, tc.p); got != tc.want {
				t.Errorf("percentile = %v, want %v", got, tc.want)
			}
		})
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i + 1
	}
	return out
}

func TestBurstValidate(t *testing.T) {
	base := func() BurstOptions {
		return BurstOptions{Versitygw: "/bin/sh", Sluice: "/bin/sh", Files: 2, FileSize: "1Mi", Clients: []int{2},
			Workers: 1, Bandwidth: "100M", Modes: []string{ModeSluice}, BlockSize: "1Mi", FilesAtOnce: 4}
	}
	tests := []struct {
		name   string
		mutate func(*BurstOptions)
		want   string
	}{
		{"good", func(*BurstOptions) {}, ""},
		{"bad size", func(o *BurstOptions) { o.FileSize = "big" }, "--file-size"},
		{"bad bandwidth", func(o *BurstOptions) { o.Bandwidth = "-1" }, "--bandwidth"},
		{"unknown mode", func(o *BurstOptions) { o.Modes = []string{"magic"} }, `unknown mode "magic"`},
		{"too many clients", func(o *BurstOptions) { o.Clients = []int{1000} }, "--clients"},
		{"late modes", func(o *BurstOptions) { o.Modes = []string{ModeScaleAhead, ModeColdStart} }, ""},
		{"a negative join", func(o *BurstOptions) { o.ColdJoin = -time.Second }, "--cold-join"},
		{"no versitygw", func(o *BurstOptions) { o.Versitygw = "/nonexistent" }, "make tools"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.mutate(&o)
			err := o.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestBurstSkips(t *testing.T) {
	o := &BurstOptions{Rclone: "", NaiveMaxClients: 16, RcloneMaxClients: 16}
	if o.skip(ModeRclone, 4) == "" || o.skip(ModeNaive, 64) == "" || o.skip(ModeNaive, 16) != "" || o.skip(ModeSluice, 256) != "" {
		t.Fatal("skip rules wrong")
	}
}
