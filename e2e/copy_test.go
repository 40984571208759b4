//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
)

// Copy mode in a namespace that enforces the restricted Pod Security
// Standard (the API server's PodSecurity admission plugin): a pod with
// sluice.dev/mode: copy is admitted, its unprivileged init container copies
// the Dataset through the cache workers, and the app finds every byte; a pod
// there that would need the FUSE sidecar is denied with a message naming
// copy mode.
func TestCopyModeInRestrictedNamespace(t *testing.T) {
	e, ns := shared, "e2e-copy"
	e.modelsDataset(t, ns, "copy")
	ctx := context.Background()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted"}}})
	if _, err := e.cs.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	pod := e.checker("copy-reader", datasetVolume("models", "models"))
	pod.Annotations = map[string]string{contract.ModeAnnotation: contract.ModeCopy}
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](1000),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	d := e.runToCompletion(t, ns, pod, 3*time.Minute)
	got, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations[contract.InjectedAnnotation] != contract.ModeCopy || len(got.Spec.InitContainers) == 0 ||
		got.Spec.InitContainers[0].Name != contract.CopierPrefix+"models" || got.Spec.Volumes[0].EmptyDir == nil {
		t.Fatalf("pod not converted to copy mode: annotations %v, init containers %d", got.Annotations, len(got.Spec.InitContainers))
	}
	var copied time.Duration
	for _, s := range got.Status.InitContainerStatuses {
		if term := s.State.Terminated; s.Name == got.Spec.InitContainers[0].Name && term != nil {
			copied = term.FinishedAt.Sub(term.StartedAt.Time)
		}
	}
	t.Logf("copy-mode pod admitted under the restricted Pod Security Standard and verified every file in %s (copy %s)",
		d.Round(time.Millisecond), copied)

	fuse := e.checker("fuse-reader", datasetVolume("models", "models"))
	fuse.Labels = map[string]string{contract.InjectLabel: "true"}
	_, err = e.cs.CoreV1().Pods(ns).Create(ctx, fuse, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "Pod Security Standard") || !strings.Contains(err.Error(), contract.ModeAnnotation+": "+contract.ModeCopy) {
		t.Fatalf("creating a FUSE-sidecar pod in a restricted namespace: %v; want a denial naming copy mode", err)
	}
	t.Logf("denied as wanted: %v", err)
}
