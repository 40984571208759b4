#!/usr/bin/env bash
# make deploy: apply deploy/ (kustomize, rendered by kubectl) to the
# cluster of `make cluster-up`, with the local sluice image, and wait until
# every component serves. All of sluice runs as pods: the CSI driver
# (controller Deployment, node DaemonSet; this kubelet's root directory is
# _output/e2e/kubelet/root, so /var/lib/kubelet is rewritten to it), the
# controller, the webhook (certificate from the cluster CA; the API server
# reaches it at the node IP through a hostPort, as no kube-proxy runs) and
# the device plugin; the controller starts cache workers per Dataset.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/_output/e2e
K8S_BIN=${K8S_BIN:?set by make}
export KUBECONFIG=$OUT/kubeconfig
kubectl() { "$K8S_BIN/kubectl" "$@"; }
IP=$(cat "$OUT/node-ip")
CTR=(ctr -n k8s.io --address "$OUT/containerd/containerd.sock")
"${CTR[@]}" images import "$OUT/images/sluice.local_sluice_e2e.tar" >/dev/null

# The webhook's serving certificate, signed by the cluster CA.
PKI=$OUT/pki
if [ ! -f "$PKI/webhook.crt" ]; then
  openssl genrsa -out "$PKI/webhook.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/webhook.key" -subj "/CN=sluice-webhook" -out "$PKI/webhook.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:sluice-webhook.sluice-system.svc\n' "$IP" >"$PKI/webhook.ext"
  openssl x509 -req -in "$PKI/webhook.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
    -extfile "$PKI/webhook.ext" -out "$PKI/webhook.crt" 2>/dev/null
fi
kubectl apply -f "$ROOT/deploy/base/namespace.yaml" >/dev/null
kubectl -n sluice-system create secret tls sluice-webhook-tls --cert="$PKI/webhook.crt" --key="$PKI/webhook.key" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# The overlay: local image, the webhook reached by URL, no cert-manager.
D=$OUT/deploy
mkdir -p "$D"
CA=$(base64 -w0 <"$PKI/ca.crt")
cat >"$D/kustomization.yaml" <<K
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: sluice-system
resources:
  - ../../../deploy/base
  - ../../../deploy/controller
  - ../../../deploy/webhook
  - ../../../deploy/deviceplugin
images:
  - name: ghcr.io/sluice-dev/sluice
    newName: sluice.local/sluice
    newTag: e2e
patches:
  - target: {kind: Certificate}
    patch: |
      \$patch: delete
      apiVersion: cert-manager.io/v1
      kind: Certificate
      metadata: {name: sluice-webhook}
  - target: {kind: Issuer}
    patch: |
      \$patch: delete
      apiVersion: cert-manager.io/v1
      kind: Issuer
      metadata: {name: sluice-webhook-selfsigned}
  - target: {kind: MutatingWebhookConfiguration, name: sluice-webhook}
    patch: |
      - op: remove
        path: /webhooks/0/clientConfig/service
      - op: add
        path: /webhooks/0/clientConfig/url
        value: https://$IP:9443/mutate--v1-pod
      - op: add
        path: /webhooks/0/clientConfig/caBundle
        value: $CA
  - target: {kind: Deployment, name: sluice-webhook}
    patch: |
      - op: replace
        path: /spec/replicas
        value: 1
      - op: replace
        path: /spec/strategy
        value: {type: Recreate}
      - op: add
        path: /spec/template/spec/containers/0/ports/0/hostPort
        value: 9443
  - target: {kind: ConfigMap, name: sluice-webhook-config}
    patch: |
      - op: replace
        path: /data/config.yaml
        value: |
          sidecar:
            image: sluice.local/sluice:e2e
            imagePullPolicy: IfNotPresent
            resources:
              requests: {cpu: 10m, memory: 64Mi}
              limits: {memory: 512Mi}
            cacheMemory: 64Mi
          profile: privileged
          nativeSidecar: auto
          controllerURL: https://sluice-controller.sluice-system.svc:8090
          startupTimeoutSeconds: 120
K
# The kubelet's root directory here is not /var/lib/kubelet (its device
# plugin directory is, hard-coded in the kubelet).
kubectl kustomize "$D" | sed -E -e "s#/var/lib/kubelet/device-plugins#@DP@#g" \
  -e "s#/var/lib/kubelet#$OUT/kubelet/root#g" -e "s#@DP@#/var/lib/kubelet/device-plugins#g" \
  -e "s#/var/cache/sluice#$OUT/csi-cache#g" | kubectl apply -f - >/dev/null
# A changed config or image: restart what runs it.
WORKLOADS="deployment/sluice-csi-controller daemonset/sluice-csi-node deployment/sluice-controller deployment/sluice-webhook daemonset/sluice-device-plugin"
# shellcheck disable=SC2086
kubectl -n sluice-system rollout restart $WORKLOADS >/dev/null
for w in $WORKLOADS; do kubectl -n sluice-system rollout status "$w" --timeout=180s; done
echo "deploy: sluice runs in namespace sluice-system (CSI controller and node, controller, webhook, device plugin)"
