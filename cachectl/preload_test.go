package cachectl

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/cacheserver"
	"github.com/sluice-dev/sluice/internal/source"
	"github.com/sluice-dev/sluice/internal/testutil"
)

func TestPreloadDue(t *testing.T) {
	now := time.Unix(10000, 0)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(-d)} }
	with := func(every time.Duration, st *v1alpha1.PreloadStatus) *v1alpha1.Dataset {
		ds := &v1alpha1.Dataset{Spec: v1alpha1.DatasetSpec{Preload: &v1alpha1.PreloadSpec{Paths: []string{"a"}}}}
		if every > 0 {
			ds.Spec.Preload.Every = &metav1.Duration{Duration: every}
		}
		ds.Status.Preload = st
		return ds
	}
	tests := []struct {
		name    string
		ds      *v1alpha1.Dataset
		desired int32
		running bool
		want    bool
	}{
		{"no preload", &v1alpha1.Dataset{}, 1, false, false},
		{"never ran", with(0, nil), 1, false, true},
		{"scaled to zero", with(0, nil), 0, false, false},
		{"running", with(0, nil), 1, true, false},
		{"done once", with(0, &v1alpha1.PreloadStatus{StartTime: at(time.Hour), CompletionTime: at(time.Hour)}), 1, false, false},
		{"interval not yet", with(2*time.Hour, &v1alpha1.PreloadStatus{StartTime: at(time.Hour), CompletionTime: at(time.Hour)}), 1, false, false},
		{"interval passed", with(time.Hour, &v1alpha1.PreloadStatus{StartTime: at(2 * time.Hour), CompletionTime: at(time.Hour)}), 1, false, true},
		{"failed recently", with(0, &v1alpha1.PreloadStatus{StartTime: at(10 * time.Second), Error: "x"}), 1, false, false},
		{"failed a while ago", with(0, &v1alpha1.PreloadStatus{StartTime: at(2 * time.Minute), Error: "x"}), 1, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := preloadDue(tc.ds, tc.desired, tc.running, now); got != tc.want {
				t.Errorf("preloadDue = %v, want %v", got, tc.want)
			}
		})
	}
}

// realWorker is a `sluice cache-worker` process over a directory.
type realWorker struct {
	url, metrics, tokenFile string
	size                    int64 // bytes under a/ and b.txt (the preload paths)
}

func startWorker(t *testing.T) *realWorker {
	t.Helper()
	dir := t.TempDir()
	files := map[string]int{"a/1.bin": 5<<20 + 3, "a/deep/2.bin": 1 << 20, "b.txt": 10, "other/skip.bin": 2 << 20}
	w := &realWorker{tokenFile: filepath.Join(t.TempDir(), "token")}
	for name, n := range files {
		p := filepath.Join(dir, "data", name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, bytes.Repeat([]byte{byte(n)}, n), 0o644); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, "other/") {
			w.size += int64(n)
		}
	}
	if err := os.WriteFile(w.tokenFile, []byte("preload-test-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.metrics = freeAddr(t)
	p := testutil.StartProc(t, testutil.SluiceBin(t), nil, "listening on ", "cache-worker", "--listen", "127.0.0.1:0",
		"--token-file", w.tokenFile, "--dataset", "warm", "--metrics-addr", w.metrics, "--cache-dir", filepath.Join(dir, "cache"),
		"file://"+filepath.Join(dir, "data"))
	w.url = "http://" + p.Line[strings.LastIndex(p.Line, " ")+1:]
	return w
}

func (w *realWorker) open(ctx context.Context, ds *v1alpha1.Dataset) (source.Source, func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	pool, err := cacheserver.NewPool(ctx, cacheserver.PoolConfig{URLs: []string{w.url}, Dataset: ds.Name, TokenFile: w.tokenFile, Insecure: true})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return cacheserver.NewSource(pool, "workers://"+ds.Name, nil), cancel, nil
}

// originBytes is the worker's sluice_origin_bytes_total.
func (w *realWorker) originBytes(t *testing.T) int64 {
	t.Helper()
	fams, err := scrape(context.Background(), http.DefaultClient, "http://"+w.metrics+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return int64(sum(fams["sluice_origin_bytes_total"]))
}

func testPreload(ctx context.Context, t *testing.T, cl client.Client, w *realWorker) {
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "warm", Namespace: "ml"}, Spec: v1alpha1.DatasetSpec{
		Source:  "file:///data",
		Preload: &v1alpha1.PreloadSpec{Paths: []string{"a", "b.txt"}, Every: &metav1.Duration{Duration: 2 * time.Second}}}}
	if err := cl.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	got := &v1alpha1.Dataset{}
	var first time.Time
	eventually(t, 60*time.Second, "a completed preload", func() bool {
		if cl.Get(ctx, client.ObjectKeyFromObject(ds), got) != nil || got.Status.Preload == nil || got.Status.Preload.CompletionTime == nil {
			return false
		}
		first = got.Status.Preload.CompletionTime.Time
		return true
	})
	p := got.Status.Preload
	if p.Files != 3 || p.TotalFiles != 3 || p.Bytes != w.size || p.TotalBytes != w.size || p.Error != "" {
		t.Fatalf("preload status %+v; want 3 files, %d bytes", *p, w.size)
	}
	if origin := w.originBytes(t); origin != w.size {
		t.Fatalf("the worker fetched %d bytes from the origin; want the preloaded %d exactly", origin, w.size)
	}
	eventually(t, 30*time.Second, "the Preloaded condition", func() bool {
		return cl.Get(ctx, client.ObjectKeyFromObject(ds), got) == nil && conditionTrue(got.Status.Conditions, v1alpha1.ConditionPreloaded)
	})
	// spec.preload.every: it runs again, and fetches nothing new.
	eventually(t, 60*time.Second, "a second preload", func() bool {
		return cl.Get(ctx, client.ObjectKeyFromObject(ds), got) == nil && got.Status.Preload != nil &&
			got.Status.Preload.CompletionTime != nil && got.Status.Preload.CompletionTime.After(first)
	})
	if origin := w.originBytes(t); origin != w.size {
		t.Fatalf("after a second preload the worker fetched %d bytes from the origin; want still %d", origin, w.size)
	}
	evs := &eventsv1.EventList{}
	if err := cl.List(ctx, evs, client.InNamespace("ml")); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs.Items {
		if e.Reason == "Preloaded" && e.Regarding.Name == "warm" {
			n++
		}
	}
	if n == 0 {
		t.Error("no Preloaded event on the Dataset")
	}
	t.Logf("preloaded %d files, %d bytes; origin bytes %d after two runs", p.Files, p.Bytes, w.originBytes(t))
	_ = cl.Delete(ctx, ds)
}

func conditionTrue(cs []metav1.Condition, typ string) bool {
	for _, c := range cs {
		if c.Type == typ {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}
