//go:build e2e

// Package e2e runs sluice on the real single-node cluster of `make
// cluster-up` (kube-apiserver, kubelet, containerd) with every component
// deployed as pods by `make deploy`: `make e2e`. Paths: (1) PVC with a
// StorageClass, (2) inline CSI volume, (3) a serverless pod converted by
// the webhook, (4) a Job with the sidecar, (5) a burst of 16 pods through
// autoscaled cache workers, (6) the CSI node plugin killed during reads,
// (7) a cache worker stopped (SIGSTOP) during a burst, (8) helm upgrade,
// uninstall and install again while a pod reads.
// Data comes from the real versitygw cluster-up runs on the node IP.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// env is what every test shares.
type env struct {
	out    string // _output/e2e
	cs     *kubernetes.Clientset
	origin *nodeOrigin
	files  map[string][]byte
}

var shared *env // set once by TestMain, read-only afterwards

func TestMain(m *testing.M) {
	e, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	shared = e
	code := m.Run()
	// Every pod is gone: the kubelet must have unpublished and unstaged
	// every volume, and the sidecars unmounted theirs.
	kubelet := filepath.Join(e.out, "kubelet")
	for deadline := time.Now().Add(90 * time.Second); len(mountsUnder(kubelet, "fuse.sluice")) > 0 && time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
	}
	if left := mountsUnder(kubelet, "fuse.sluice"); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: %d sluice mounts left on the node after the tests: %v\n", len(left), left)
		code = 1
	}
	// No secret in any log, event or status of the whole run.
	// The kubelet keeps the logs of pods that still exist: sluice-system's
	// components for the whole run (TestNoTokenOrDataInTheClear scans the
	// workers and a sidecar while they are there).
	if found, _ := e.leakedSecrets(); len(found) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: secrets in the clear:\n  %s\n", strings.Join(found, "\n  "))
		code = 1
	}
	os.Exit(code)
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}

func setup() (*env, error) {
	ctrllog.SetLogger(klog.NewKlogr()) // the Dataset client's logs, through klog like the rest
	out := filepath.Join(repoRoot(), "_output", "e2e")
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(out, "kubeconfig"))
	if err != nil {
		return nil, fmt.Errorf("no cluster (run make cluster-up): %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	e := &env{out: out, cs: cs, files: map[string][]byte{
		"models/weights.bin": pattern(9<<20 + 17),
		"models/config.json": []byte(`{"layers": 32}` + "\n"),
		"readme.txt":         []byte("sluice e2e\n"),
	}}
	if e.origin, err = readNodeOrigin(out); err != nil {
		return nil, err
	}
	if err := e.origin.putFiles("data", e.files); err != nil {
		return nil, err
	}
	return e, nil
}

// nodeOrigin is the S3 origin `make cluster-up` runs on the node IP, which
// pods (the CSI node plugin, the cache workers) can reach.
type nodeOrigin struct {
	endpoint, access, secret string
	client                   *minio.Client
}

func readNodeOrigin(out string) (*nodeOrigin, error) {
	raw, err := os.ReadFile(filepath.Join(out, "origin.env"))
	if err != nil {
		return nil, fmt.Errorf("origin.env (make cluster-up writes it): %w", err)
	}
	o := &nodeOrigin{}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "S3_ENDPOINT":
			o.endpoint = v
		case "AWS_ACCESS_KEY_ID":
			o.access = v
		case "AWS_SECRET_ACCESS_KEY":
			o.secret = v
		}
	}
	o.client, err = minio.New(strings.TrimPrefix(o.endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(o.access, o.secret, ""), BucketLookup: minio.BucketLookupPath})
	return o, err
}

// putFiles creates bucket (if needed) and writes files into it.
func (o *nodeOrigin) putFiles(bucket string, files map[string][]byte) error {
	ctx := context.Background()
	if err := o.client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil && !strings.Contains(err.Error(), "own") {
		return err
	}
	for k, v := range files {
		if _, err := o.client.PutObject(ctx, bucket, k, bytes.NewReader(v), int64(len(v)), minio.PutObjectOptions{}); err != nil {
			return err
		}
	}
	return nil
}

func (o *nodeOrigin) put(t *testing.T, bucket string, files map[string][]byte) {
	t.Helper()
	if err := o.putFiles(bucket, files); err != nil {
		t.Fatal(err)
	}
}

// mountsUnder lists mount points below dir (of file system type fstype,
// when set), deepest first.
func mountsUnder(dir, fstype string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var ms []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[4], dir) {
			continue
		}
		if fstype != "" {
			i := slices.Index(f, "-")
			if i < 0 || i+1 >= len(f) || f[i+1] != fstype {
				continue
			}
		}
		ms = append(ms, f[4])
	}
	slices.Reverse(ms)
	return ms
}

// pattern is n deterministic bytes.
func pattern(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}
