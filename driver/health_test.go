package driver

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/source"
)

// probedSource answers Stat with err (nil: the root).
type probedSource struct {
	source.Source
	err atomic.Pointer[error]
}

func (s *probedSource) ID() string { return "s3://bucket/" }
func (s *probedSource) Stat(ctx context.Context, p string) (source.Entry, error) {
	if e := s.err.Load(); e != nil {
		return source.Entry{}, *e
	}
	return source.Entry{IsDir: true}, nil
}

func TestHealthProbe(t *testing.T) {
	down := errors.New("dial tcp: connection refused")
	tests := []struct {
		name       string
		sourceErr  error
		cached     int64
		failures   int // worker failures since the previous probe
		wantStatus string
		wantReason string
	}{
		{"healthy", nil, 0, 0, "", ""},
		{"source down, nothing cached", down, 0, 0, "INACCESSIBLE", "SourceUnreachable"},
		{"source down, blocks cached", down, 4 << 20, 0, "DEGRADED", "ServingFromCache"},
		{"workers failing", nil, 0, 2, "DEGRADED", "WorkersFailing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := metrics.NewCache(reg)
			src := &probedSource{}
			h := newHealthProbe(src, func() int64 { return tc.cached }, reg)
			h.probe(context.Background()) // a healthy start
			if got := h.current(); len(got) != 0 {
				t.Fatalf("first probe of a healthy source: %v", got)
			}
			if tc.sourceErr != nil {
				src.err.Store(&tc.sourceErr)
			}
			for range tc.failures {
				m.WorkerFailed("silent")
			}
			h.probe(context.Background())
			got := h.current()
			switch {
			case tc.wantStatus == "" && len(got) != 0:
				t.Fatalf("conditions %v, want none", got)
			case tc.wantStatus != "" && (len(got) != 1 || got[0].Status != tc.wantStatus || got[0].Reason != tc.wantReason):
				t.Fatalf("conditions %v, want %s %s", got, tc.wantStatus, tc.wantReason)
			}
			// Recovery clears it at the next probe.
			src.err.Store(nil)
			h.probe(context.Background())
			if got := h.current(); len(got) != 0 {
				t.Fatalf("after recovery: %v, want none", got)
			}
		})
	}
}

func TestNodeGetVolumeHealth(t *testing.T) {
	degraded := []healthEntry{{"DEGRADED", "ServingFromCache", "s3://b/ does not answer"}}
	tests := []struct {
		name       string
		health     []healthEntry
		statsErr   error
		req        func(staging, target string) *csi.NodeGetVolumeHealthRequest
		wantCode   codes.Code
		wantReason string // "" healthy
	}{
		{"healthy", nil, nil, func(_, target string) *csi.NodeGetVolumeHealthRequest {
			return &csi.NodeGetVolumeHealthRequest{VolumeId: "v", VolumePublishPath: target}
		}, codes.OK, ""},
		{"degraded, by staging path", degraded, nil, func(staging, _ string) *csi.NodeGetVolumeHealthRequest {
			return &csi.NodeGetVolumeHealthRequest{VolumeId: "v", StagingTargetPath: staging}
		}, codes.OK, "ServingFromCache"},
		{"session not answering", nil, errUnavailable, func(_, target string) *csi.NodeGetVolumeHealthRequest {
			return &csi.NodeGetVolumeHealthRequest{VolumeId: "v", VolumePublishPath: target}
		}, codes.OK, "SessionNotResponding"},
		{"no path: by volume id", degraded, nil, func(_, _ string) *csi.NodeGetVolumeHealthRequest {
			return &csi.NodeGetVolumeHealthRequest{VolumeId: "v"}
		}, codes.OK, "ServingFromCache"},
		{"no id", nil, nil, func(_, target string) *csi.NodeGetVolumeHealthRequest {
			return &csi.NodeGetVolumeHealthRequest{VolumePublishPath: target}
		}, codes.InvalidArgument, ""},
		{"unknown volume", nil, nil, func(_, target string) *csi.NodeGetVolumeHealthRequest {
			return &csi.NodeGetVolumeHealthRequest{VolumeId: "w", VolumePublishPath: target}
		}, codes.NotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, staging, target := publishedNode(t)
			f.l.mu.Lock()
			f.l.health, f.l.statsErr = tc.health, tc.statsErr
			f.l.mu.Unlock()
			resp, err := f.c.NodeGetVolumeHealth(context.Background(), tc.req(staging, target))
			wantCode(t, err, tc.wantCode, "")
			if tc.wantCode != codes.OK {
				return
			}
			st := resp.GetVolumeHealth().GetHealthStatuses()
			switch {
			case tc.wantReason == "" && len(st) != 0:
				t.Fatalf("health %v, want none", st)
			case tc.wantReason != "" && (len(st) != 1 || st[0].GetReason() != tc.wantReason):
				t.Fatalf("health %v, want %s", st, tc.wantReason)
			}
		})
	}
}
