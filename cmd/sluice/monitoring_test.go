package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/testutil"
	"github.com/sluice-dev/sluice/internal/testutil/kubeapi"
)

const monitoringDir = "../../deploy/monitoring"

// pinnedTool is a binary of make tools, named by an environment variable.
func pinnedTool(t *testing.T, envVar, name string) string {
	t.Helper()
	bin := os.Getenv(envVar)
	if bin == "" {
		bin = filepath.Join("../../bin", name)
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing (make tools); CI must run this test", name)
		}
		t.Skipf("needs %s (make tools)", name)
	}
	return bin
}

// TestMonitoringRules: promtool validates the alerts and runs their unit
// tests (deploy/monitoring/alerts_test.yaml).
func TestMonitoringRules(t *testing.T) {
	promtool := pinnedTool(t, "SLUICE_PROMTOOL", "promtool")
	for _, args := range [][]string{{"check", "rules", "alerts.yaml"}, {"test", "rules", "alerts_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = monitoringDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestMonitoringUsesRealMetrics: every metric the dashboard and the alerts
// select is exported by a real cache worker, a mount reading through it, a
// CSI node plugin serving a staged volume, or the controller running
// against a real API server with a Dataset (or is
// one of the kubelet's, in external-metrics.txt, which the e2e suite
// checks on its kubelet).
func TestMonitoringUsesRealMetrics(t *testing.T) {
	testutil.RequireRootFUSE(t)
	exprnames := pinnedTool(t, "SLUICE_EXPRNAMES", "exprnames")
	bin := testutil.SluiceBin(t)
	have := map[string]string{} // metric → where it was scraped

	o := startFetchOrigin(t, 2, 1<<20, 0)
	origin := "s3://data/d?pathStyle=true&endpoint=" + o.proxy.URL()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("monitoring-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	serveTLS, verifyTLS := testutil.WorkerTLS(t)
	workerMetrics := freeAddr(t)
	w := testutil.StartProc(t, bin, o.creds, "listening on ", slices.Concat([]string{"cache-worker", origin, "--listen", "127.0.0.1:0",
		"--token-file", tok, "--cache-dir", "", "--block-size", "1Mi", "--metrics-addr", workerMetrics}, serveTLS)...)
	wurl := "https://" + w.Line[strings.LastIndex(w.Line, "listening on ")+len("listening on "):]
	mountMetrics := freeAddr(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	startMount(t, bin, nil, slices.Concat([]string{origin, dir, "--workers", wurl, "--worker-token-file", tok, "--origin-fallback=false",
		"--cache-dir", t.TempDir(), "--block-size", "1Mi", "--metrics-addr", mountMetrics}, verifyTLS)...)
	o.check(t, dir)
	scrapeNames(t, "http://"+workerMetrics+"/metrics", "cache worker", have)
	scrapeNames(t, "http://"+mountMetrics+"/metrics", "mount", have)

	// The node plugin's condition series exist while a volume is unhealthy:
	// its origin stops answering, and the session's next probe says so.
	nodeMetrics := "http://" + stagedNode(t, bin, origin, o.creds) + "/metrics"
	if _, body := get(t, nodeMetrics, ""); !strings.Contains(body, `sluice_csi_volume_abnormal{volume_id="monitoring-vol"} 0`) {
		t.Errorf("a healthy staged volume is not reported as such:\n%s", body)
	}
	o.proxy.SetBlackhole(true)
	for deadline := time.Now().Add(40 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		_, body := get(t, nodeMetrics, "")
		if strings.Contains(body, `sluice_csi_volume_abnormal{volume_id="monitoring-vol"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node plugin did not report the volume of a blackholed origin unhealthy:\n%s", body)
		}
	}
	scrapeNames(t, nodeMetrics, "CSI node plugin", have)
	o.proxy.SetBlackhole(false)

	srv := kubeapi.Start(t)
	kubeconfig := srv.WriteKubeconfig(t)
	kubectl := pinnedTool(t, "SLUICE_KUBECTL", "kubectl")
	run := func(stdin string, args ...string) {
		t.Helper()
		cmd := exec.Command(kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("", "apply", "-f", "../../deploy/controller/sluice.dev_datasets.yaml")
	run("", "wait", "--for=condition=Established", "crd/datasets.sluice.dev", "--timeout=60s")
	run(`{"apiVersion": "sluice.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "imagenet", "namespace": "default"},
		"spec": {"source": "s3://datasets/imagenet"}}`, "apply", "-f", "-")
	ctlMetrics := freeAddr(t)
	ctl := exec.Command(bin, "controller", "--kubeconfig", kubeconfig,
		"--worker-image", "sluice.local/sluice:test", "--tls=false", "--leader-elect=false", "--preload=false",
		"--metrics-addr", ctlMetrics, "--health-addr", "0", "--heartbeat-addr", freeAddr(t))
	ctlLog := &testutil.SyncBuffer{}
	ctl.Stdout, ctl.Stderr = ctlLog, ctlLog
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Process.Kill(); ctl.Wait() })
	for deadline := time.Now().Add(30 * time.Second); have["sluice_dataset_workers_desired"] == ""; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the controller exports no sluice_dataset_workers_desired for its Dataset; its log:\n%s", ctlLog.String())
		}
		if resp, err := http.Get("http://" + ctlMetrics + "/metrics"); err == nil {
			resp.Body.Close()
			scrapeNames(t, "http://"+ctlMetrics+"/metrics", "controller", have)
		}
	}
	external, err := os.ReadFile(filepath.Join(monitoringDir, "external-metrics.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(external), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			have[l] = "the kubelet (external-metrics.txt)"
		}
	}

	cmd := exec.Command(exprnames, "alerts.yaml", "dashboard.json")
	cmd.Dir = monitoringDir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("exprnames: %v", err)
	}
	var exprs, used int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var f struct {
			Where, Expr, Error string
			Metrics            []string
		}
		if err := json.Unmarshal([]byte(line), &f); err != nil {
			t.Fatalf("exprnames output %q: %v", line, err)
		}
		exprs++
		if f.Error != "" {
			t.Errorf("%s: %s: %s", f.Where, f.Error, f.Expr)
		}
		for _, m := range f.Metrics {
			used++
			if have[m] == "" {
				t.Errorf("%s uses %s, which nothing exports (expr %s)", f.Where, m, f.Expr)
			}
		}
	}
	if exprs < 10 || used < exprs {
		t.Errorf("%d expressions naming %d metrics: the dashboard and alerts were not read", exprs, used)
	}
	t.Logf("%d expressions, %d metric references, all exported (%d names scraped)", exprs, used, len(have))
}

// scrapeNames adds the metric names url exports (histograms as their
// _bucket, _sum and _count series) to have.
func scrapeNames(t *testing.T, url, who string, have map[string]string) {
	t.Helper()
	code, body := get(t, url, "")
	if code != 200 {
		t.Fatalf("%s %s: %d", who, url, code)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "#" || f[1] != "TYPE" {
			continue
		}
		names := []string{f[2]}
		if slices.Contains([]string{"histogram", "summary"}, f[3]) {
			names = append(names, f[2]+"_sum", f[2]+"_count")
			if f[3] == "histogram" {
				names = append(names, f[2]+"_bucket")
			}
		}
		for _, n := range names {
			if have[n] == "" {
				have[n] = who
			}
		}
	}
}

// stagedNode runs `sluice csi --mode node` with one staged volume of origin
// (NodeStageVolume over its socket, as the kubelet calls it) and returns
// its metrics address; the volume is unstaged at cleanup.
func stagedNode(t *testing.T, bin, origin string, creds []string) string {
	t.Helper()
	dir := t.TempDir()
	socket, addr := filepath.Join(dir, "csi.sock"), freeAddr(t)
	node := exec.Command(bin, "csi", "--mode", "node", "--endpoint", "unix://"+socket, "--node-id", "n1",
		"--state-dir", filepath.Join(dir, "state"), "--cache-dir", filepath.Join(dir, "cache"), "--worker-token-file", "/nonexistent",
		"--metrics-addr", addr)
	log := &testutil.SyncBuffer{}
	node.Stdout, node.Stderr = log, log
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Process.Kill(); node.Wait() })
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := csi.NewNodeClient(conn)
	staging := filepath.Join(dir, "staging")
	secrets := map[string]string{}
	for _, kv := range creds {
		k, v, _ := strings.Cut(kv, "=")
		secrets[k] = v
	}
	req := &csi.NodeStageVolumeRequest{VolumeId: "monitoring-vol", StagingTargetPath: staging, Secrets: secrets,
		VolumeContext: map[string]string{contract.AttrSource: origin},
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY}}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err = c.NodeStageVolume(ctx, req)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("NodeStageVolume: %v; node log:\n%s", err, log.String())
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "monitoring-vol", StagingTargetPath: staging}); err != nil {
			t.Errorf("NodeUnstageVolume: %v", err)
		}
	})
	return addr
}
