//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-dev/sluice/internal/testutil/docblocks"
)

// TestDocs runs every `sh e2e` block of docs/*.md on this cluster, page by
// page in order, as a user would paste them: bash in the repository's root
// with kubectl on PATH and the node's S3 origin in SLUICE_DOCS_S3_*. A page
// stops at its first failing block; the namespaces it made go at the end.
func TestDocs(t *testing.T) {
	e := shared
	root := repoRoot()
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("no docs pages: %v", err)
	}
	kubectl := os.Getenv("SLUICE_KUBECTL")
	if kubectl == "" {
		t.Fatal("SLUICE_KUBECTL is not set (make e2e sets it)")
	}
	env := append(os.Environ(), "KUBECONFIG="+filepath.Join(e.out, "kubeconfig"),
		"PATH="+filepath.Dir(kubectl)+":"+os.Getenv("PATH"),
		"SLUICE_DOCS_S3_ENDPOINT="+e.origin.endpoint, "SLUICE_DOCS_S3_ACCESS_KEY="+e.origin.access,
		"SLUICE_DOCS_S3_SECRET_KEY="+e.origin.secret)
	ran := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		blocks := docblocks.Parse(string(b))
		var run []docblocks.Block
		for _, bl := range blocks {
			if bl.Tested() {
				run = append(run, bl)
			}
		}
		if len(run) == 0 {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(page), ".md")
		t.Run(name, func(t *testing.T) {
			t.Cleanup(func() { e.deleteDocNamespaces(t, "docs-"+name) })
			for _, bl := range run {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", bl.Body)
				cmd.Dir, cmd.Env = root, env
				out, err := cmd.CombinedOutput()
				cancel()
				if err != nil {
					t.Fatalf("%s:%d: %v\n--- block\n%s--- output\n%s", filepath.Base(page), bl.Line, err, bl.Body, out)
				}
				ran++
			}
		})
	}
	t.Logf("ran %d documented blocks", ran)
}

// deleteDocNamespaces deletes the namespaces named prefix or prefix-*, and
// waits until they are gone (their pods unmounted).
func (e *env) deleteDocNamespaces(t *testing.T, prefix string) {
	ctx := context.Background()
	list, err := e.cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Error(err)
		return
	}
	var mine []string
	for _, ns := range list.Items {
		if ns.Name == prefix || strings.HasPrefix(ns.Name, prefix+"-") {
			mine = append(mine, ns.Name)
			e.cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
		}
	}
	for _, ns := range mine {
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
			if _, err := e.cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("namespace %s is still there 2 minutes after its deletion", ns)
				break
			}
		}
	}
}
