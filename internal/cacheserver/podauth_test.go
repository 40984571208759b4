package cacheserver

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/kubeauth"
	"github.com/sluice-dev/sluice/internal/listcache"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

// TestPodTokensAtTheWorker: a worker checks projected tokens with a real
// API server: a pod of an allowed namespace reads, another namespace gets
// 403 naming the dataset, a bad token 401.
func TestPodTokensAtTheWorker(t *testing.T) {
	api := kubeapi.Start(t)
	o := startOrigin(t, 1, 1<<20)
	src := o.source(t)
	cache, err := blockcache.New(blockcache.Config{BlockSize: testBlock, Getter: blockcache.OriginGetter{Source: src}})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	auth := &PodTokens{Reviewer: &kubeauth.TokenReviewer{Client: kubernetes.NewForConfigOrDie(api.Config)},
		Namespaces: []string{"ml", "shared"}, Dataset: "ml/imagenet", Trusted: []string{"sluice-system/default"}}
	worker, err := NewServer(ServerConfig{Dataset: "imagenet", Listings: listcache.New(src, time.Minute), Cache: cache, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: worker.Handler()}
	go hs.Serve(ln)
	defer hs.Close()
	mine, _ := api.PodToken(t, "ml", "reader", contract.TokenAudience)
	theirs, _ := api.PodToken(t, "other", "intruder", contract.TokenAudience)
	node, _ := api.PodToken(t, "sluice-system", "csi-node", contract.TokenAudience)
	tests := []struct {
		name, token string
		status      int
		reason      string
	}{
		{"pod of the dataset's namespace", mine, 200, ""},
		{"pod of another namespace", theirs, 403, `may not read dataset "ml/imagenet"`},
		{"not a token", "garbage", 401, "unauthorized"},
		{"a trusted service account (the CSI node plugin)", node, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/v1/datasets/imagenet/list?path=", nil)
			req.Header.Set("Authorization", "Bearer "+tc.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.reason) {
				t.Fatalf("status %d %q, want %d with %q", resp.StatusCode, body, tc.status, tc.reason)
			}
		})
	}
}
