package cachectl

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
)

func TestWarmDue(t *testing.T) {
	now := time.Unix(10000, 0)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(-d)} }
	with := func(first []string, warm *v1alpha1.PreloadStatus) *v1alpha1.Dataset {
		return &v1alpha1.Dataset{Status: v1alpha1.DatasetStatus{FirstReads: first, Warm: warm}}
	}
	coming := decision{workers: 2, incoming: 16}
	tests := []struct {
		name    string
		ds      *v1alpha1.Dataset
		d       decision
		running bool
		want    bool
	}{
		{"a burst is coming", with([]string{"a"}, nil), coming, false, true},
		{"nothing read before", with(nil, nil), coming, false, false},
		{"no pods coming", with([]string{"a"}, nil), decision{workers: 1}, false, false},
		{"its clients already read", with([]string{"a"}, nil), decision{workers: 2, incoming: 15, clients: 1}, false, false},
		{"no workers wanted", with([]string{"a"}, nil), decision{incoming: 3}, false, false},
		{"one runs", with([]string{"a"}, nil), coming, true, false},
		{"this burst was warmed", with([]string{"a"}, &v1alpha1.PreloadStatus{StartTime: at(time.Minute)}), coming, false, false},
		{"an earlier burst was", with([]string{"a"}, &v1alpha1.PreloadStatus{StartTime: at(time.Hour), CompletionTime: at(time.Hour)}), coming, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := warmDue(tc.ds, tc.d, tc.running, now); got != tc.want {
				t.Errorf("warmDue = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFirstReadsOf(t *testing.T) {
	now := time.Unix(10000, 0)
	type beat struct {
		pod   string
		first []string
		age   time.Duration
	}
	tests := []struct {
		name  string
		beats []beat
		want  []string
	}{
		{"none", nil, nil},
		{"one pod, in its order", []beat{{"p1", []string{"c", "a", "b"}, 0}}, []string{"c", "a", "b"}},
		{"more pods first, then earlier", []beat{
			{"p1", []string{"x", "shard-0", "shard-1"}, 0},
			{"p2", []string{"shard-0", "shard-1", "y"}, 0},
			{"p3", []string{"shard-1", "shard-0"}, 0},
		}, []string{"shard-0", "shard-1", "x", "y"}},
		{"a pod not heard within the window is left out", []beat{
			{"p1", []string{"old"}, time.Minute},
			{"p2", []string{"new"}, 0},
		}, []string{"new"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &Demand{Window: 30 * time.Second}
			for _, b := range tc.beats {
				d.Record(b.pod, []string{"ml/ds"}, 0, map[string][]string{"ml/ds": b.first}, now.Add(-b.age))
			}
			if got := d.FirstReadsOf("ml/ds", now); !slices.Equal(got, tc.want) {
				t.Errorf("FirstReadsOf = %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("at most MaxFirstReads", func(t *testing.T) {
		d := &Demand{}
		for i := range 3 * MaxFirstReads {
			d.Record(string(rune('a'+i)), []string{"ml/ds"}, 0, map[string][]string{"ml/ds": {string(rune('A' + i))}}, now)
		}
		if got := d.FirstReadsOf("ml/ds", now); len(got) != MaxFirstReads {
			t.Errorf("%d first reads, want %d", len(got), MaxFirstReads)
		}
	})
}

func TestValidFirstReads(t *testing.T) {
	many := make([]string, 3*contract.FirstReadsPerClient)
	for i := range many {
		many[i] = string(rune('a' + i))
	}
	long := string(make([]byte, maxReadPath+1))
	tests := []struct {
		name string
		hb   contract.Heartbeat
		want map[string][]string
	}{
		{"none", contract.Heartbeat{Datasets: []string{"ml/ds"}}, nil},
		{"kept", contract.Heartbeat{Datasets: []string{"ml/ds"}, FirstReads: map[string][]string{"ml/ds": {"a/b.bin", "c"}}},
			map[string][]string{"ml/ds": {"a/b.bin", "c"}}},
		{"a Dataset the pod does not read is dropped", contract.Heartbeat{Datasets: []string{"ml/ds"},
			FirstReads: map[string][]string{"ml/ds": {"a"}, "other/ds": {"b"}}}, map[string][]string{"ml/ds": {"a"}}},
		{"unclean, absolute, empty, too long and repeated paths are dropped", contract.Heartbeat{Datasets: []string{"ml/ds"},
			FirstReads: map[string][]string{"ml/ds": {"../etc/passwd", "/abs", "", "a//b", long, "ok", "ok"}}},
			map[string][]string{"ml/ds": {"ok"}}},
		{"at most FirstReadsPerClient", contract.Heartbeat{Datasets: []string{"ml/ds"}, FirstReads: map[string][]string{"ml/ds": many}},
			map[string][]string{"ml/ds": many[:contract.FirstReadsPerClient]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := validFirstReads(tc.hb)
			if len(got) != len(tc.want) {
				t.Fatalf("validFirstReads = %q, want %q", got, tc.want)
			}
			for ds, w := range tc.want {
				if !slices.Equal(got[ds], w) {
					t.Errorf("%s: %q, want %q", ds, got[ds], w)
				}
			}
		})
	}
}
