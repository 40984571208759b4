package webhook

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sluice-dev/sluice/internal/contract"
)

// Trigger names (logged and recorded in the injected annotation's reason).
const (
	triggerPodLabel       = "pod-label"
	triggerNamespaceLabel = "namespace-label"
	triggerNodeName       = "node-name"
	triggerNodeSelector   = "node-selector"
	triggerNodeAffinity   = "node-affinity"
	triggerToleration     = "toleration"
	triggerCopyAnnotation = "copy-annotation"
)

// trigger says why a pod is converted ("" when it is not).
func (d *Defaulter) trigger(ctx context.Context, pod *corev1.Pod, ns string) (string, error) {
	switch pod.Labels[contract.InjectLabel] {
	case "false":
		return "", nil
	case "true":
		return triggerPodLabel, nil
	}
	if pod.Annotations[contract.ModeAnnotation] == contract.ModeCopy {
		return triggerCopyAnnotation, nil
	}
	if t := d.serverlessTarget(pod); t != "" {
		return t, nil
	}
	if pod.Spec.NodeName != "" {
		node := &corev1.Node{}
		found, err := d.get(ctx, types.NamespacedName{Name: pod.Spec.NodeName}, node)
		if err != nil {
			return "", fmt.Errorf("reading node %s: %w", pod.Spec.NodeName, err)
		}
		if found && d.serverlessNode(node) {
			return triggerNodeName, nil
		}
	}
	nsObj := &corev1.Namespace{}
	found, err := d.get(ctx, types.NamespacedName{Name: ns}, nsObj)
	if err != nil {
		return "", fmt.Errorf("reading namespace %s: %w", ns, err)
	}
	if found && nsObj.Labels[contract.InjectLabel] == contract.InjectEnabled {
		return triggerNamespaceLabel, nil
	}
	return "", nil
}

// get reads through the cache and, on a miss, once from the API server
// (the cache may not have seen a just-created object). found is false when
// neither has it.
func (d *Defaulter) get(ctx context.Context, key types.NamespacedName, obj client.Object) (bool, error) {
	err := d.Client.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) && d.APIReader != nil {
		err = d.APIReader.Get(ctx, key, obj)
	}
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// serverlessNode reports whether a node carries every label of one of the
// configured serverless selectors.
func (d *Defaulter) serverlessNode(node *corev1.Node) bool {
	for _, sel := range d.Config.Serverless.NodeSelectors {
		if containsAll(node.Labels, sel) {
			return true
		}
	}
	return false
}

// serverlessTarget reports how the pod's spec pins it to serverless nodes:
// a nodeSelector that only serverless nodes match, a required node affinity
// whose every term only serverless nodes match, or a toleration of the
// serverless taint.
func (d *Defaulter) serverlessTarget(pod *corev1.Pod) string {
	for _, sel := range d.Config.Serverless.NodeSelectors {
		if containsAll(pod.Spec.NodeSelector, sel) {
			return triggerNodeSelector
		}
	}
	if a := pod.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		all := len(terms) > 0
		for _, term := range terms {
			all = all && d.serverlessTerm(term)
		}
		if all {
			return triggerNodeAffinity
		}
	}
	for _, tol := range pod.Spec.Tolerations {
		if tol.Key == "" {
			continue // tolerates everything: says nothing about serverless
		}
		for _, k := range d.Config.Serverless.TolerationKeys {
			if tol.Key == k {
				return triggerToleration
			}
		}
	}
	return ""
}

// serverlessTerm reports whether every node matching term is serverless:
// for one selector, each of its labels is required by an In expression
// whose only value is the label's.
func (d *Defaulter) serverlessTerm(term corev1.NodeSelectorTerm) bool {
	for _, sel := range d.Config.Serverless.NodeSelectors {
		ok := true
		for k, v := range sel {
			ok = ok && requiresLabel(term.MatchExpressions, k, v)
		}
		if ok {
			return true
		}
	}
	return false
}

func requiresLabel(exprs []corev1.NodeSelectorRequirement, key, value string) bool {
	for _, e := range exprs {
		if e.Key == key && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) > 0 {
			only := true
			for _, v := range e.Values {
				only = only && v == value
			}
			if only {
				return true
			}
		}
	}
	return false
}

func containsAll(labels, want map[string]string) bool {
	if len(want) == 0 {
		return false
	}
	for k, v := range want {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
