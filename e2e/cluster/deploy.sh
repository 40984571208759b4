#!/usr/bin/env bash
# make deploy: install (or upgrade) the Helm chart deploy/charts/sluice as
# the release "sluice" on the cluster of `make cluster-up`, with the local
# sluice image, and wait until every component serves. All of sluice runs
# as pods: the CSI driver (controller Deployment, node DaemonSet), the
# controller, the webhook and the device plugin; the controller starts
# cache workers per Dataset.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/_output/e2e
K8S_BIN=${K8S_BIN:?set by make}
export KUBECONFIG=$OUT/kubeconfig
HELM=${SLUICE_HELM:?set by make}
kubectl() { "$K8S_BIN/kubectl" "$@"; }
helm() { "$HELM" "$@"; }
CTR=(ctr -n k8s.io --address "$OUT/containerd/containerd.sock")
"${CTR[@]}" images import "$OUT/images/sluice.local_sluice_e2e.tar" >/dev/null

# The chart's values for this cluster: the local image, and this kubelet's
# root directory (its device plugin directory is /var/lib/kubelet's, which
# the kubelet hard-codes). The chart makes the webhook's certificate; the
# API server reaches the webhook's pods by their endpoints
# (--enable-aggregator-routing), as no kube-proxy runs.
D=$OUT/deploy
mkdir -p "$D"
cat >"$D/values.yaml" <<V
image: {repository: sluice.local/sluice, tag: e2e}
kubeletDir: $OUT/kubelet/root
cacheDir: $OUT/csi-cache
webhook:
  config:
    sidecar:
      image: sluice.local/sluice:e2e
      imagePullPolicy: IfNotPresent
      resources:
        requests: {cpu: 10m, memory: 64Mi}
        limits: {memory: 512Mi}
      cacheMemory: 64Mi
V
installed=false
if helm status sluice -n sluice-system >/dev/null 2>&1; then
  installed=true
elif kubectl -n sluice-system get deployment/sluice-controller >/dev/null 2>&1; then
  # Installed with kustomize before: Helm adopts objects that carry its
  # ownership label and annotations. The webhook and its configuration are
  # made anew (they named the webhook by URL, served on a hostPort).
  installed=true
  kubectl delete mutatingwebhookconfiguration sluice-webhook --ignore-not-found >/dev/null
  kubectl -n sluice-system delete deployment sluice-webhook --ignore-not-found >/dev/null
  helm template sluice "$ROOT/deploy/charts/sluice" -n sluice-system -f "$D/values.yaml" \
    --kube-version "$(kubectl version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n1)" >"$D/adopt.yaml"
  kubectl label -f "$D/adopt.yaml" app.kubernetes.io/managed-by=Helm --overwrite >/dev/null 2>&1 || true
  kubectl annotate -f "$D/adopt.yaml" meta.helm.sh/release-name=sluice meta.helm.sh/release-namespace=sluice-system \
    --overwrite >/dev/null 2>&1 || true
fi
helm upgrade --install sluice "$ROOT/deploy/charts/sluice" -n sluice-system --create-namespace \
  -f "$D/values.yaml" --wait --timeout 5m >/dev/null
# A rebuilt image under the same tag: restart what runs it.
WORKLOADS="deployment/sluice-csi-controller daemonset/sluice-csi-node deployment/sluice-controller deployment/sluice-webhook daemonset/sluice-device-plugin"
# shellcheck disable=SC2086
$installed && kubectl -n sluice-system rollout restart $WORKLOADS >/dev/null
for w in $WORKLOADS; do kubectl -n sluice-system rollout status "$w" --timeout=180s; done
echo "deploy: sluice runs in namespace sluice-system (CSI controller and node, controller, webhook, device plugin)"
