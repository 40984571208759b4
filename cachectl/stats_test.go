package cachectl

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// workerAt serves a worker's metrics on ip's metrics port: with held set,
// it accepts connections and never answers (a pod being torn down).
func workerAt(t *testing.T, ip string, cached int, held bool) corev1.Pod {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(metricsPort)))
	if err != nil {
		t.Skipf("cannot listen on %s:%d: %v", ip, metricsPort, err)
	}
	stop := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if held {
			select {
			case <-stop:
			case <-r.Context().Done():
			}
			return
		}
		fmt.Fprintf(w, "# TYPE sluice_cache_memory_bytes gauge\nsluice_cache_memory_bytes %d\n", cached)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { close(stop); srv.Close() })
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "worker-" + ip}, Status: corev1.PodStatus{PodIP: ip,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
}

func TestScrapeStats(t *testing.T) {
	terminating := func(p corev1.Pod) corev1.Pod {
		p.DeletionTimestamp = &metav1.Time{}
		return p
	}
	tests := []struct {
		name    string
		pods    func(t *testing.T) []corev1.Pod
		cached  int64
		failing string // a pod the error names
	}{
		{"every ready worker is summed", func(t *testing.T) []corev1.Pod {
			return []corev1.Pod{workerAt(t, "127.0.0.2", 100, false), workerAt(t, "127.0.0.3", 20, false)}
		}, 120, ""},
		{"a terminating worker is not asked", func(t *testing.T) []corev1.Pod {
			return []corev1.Pod{workerAt(t, "127.0.0.2", 100, false), terminating(workerAt(t, "127.0.0.3", 20, true))}
		}, 100, ""},
		{"a worker that does not answer fails the sample", func(t *testing.T) []corev1.Pod {
			return []corev1.Pod{workerAt(t, "127.0.0.2", 100, false), workerAt(t, "127.0.0.3", 20, true)}
		}, 100, "worker-127.0.0.3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ws, err := ScrapeStats(http.DefaultClient)(context.Background(), tc.pods(t))
			switch {
			case tc.failing == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.failing != "" && (err == nil || !strings.Contains(err.Error(), tc.failing)):
				t.Fatalf("error %v; want one naming %s", err, tc.failing)
			}
			if ws.CachedBytes != tc.cached {
				t.Errorf("cached bytes %d, want %d", ws.CachedBytes, tc.cached)
			}
		})
	}
}
