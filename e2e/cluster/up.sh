#!/usr/bin/env bash
# make cluster-up: a real single-node Kubernetes (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet) on this
# machine, all state under _output/e2e. Idempotent: what runs is kept.
# Facts this relies on are in shared/CLUSTER-NOTES.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/_output/e2e
K8S_BIN=${K8S_BIN:?set by make}
BIN=$ROOT/bin
NODE=${NODE_NAME:-sluice-e2e}
mkdir -p "$OUT"/{pki,logs,pids,etcd,cni/conf,cni/data,kubelet,containerd,images,pod-logs,origin}

node_ip() { ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1; }
IP=$(node_ip)
[ -n "$IP" ] || { echo "cluster-up: no non-loopback IPv4 address" >&2; exit 1; }

running() { [ -f "$OUT/pids/$1.pid" ] && kill -0 "$(cat "$OUT/pids/$1.pid")" 2>/dev/null; }
start() { # name, command...
  local name=$1; shift
  if running "$name"; then return; fi
  nohup "$@" >"$OUT/logs/$name.log" 2>&1 &
  echo $! >"$OUT/pids/$name.pid"
}

# --- PKI (openssl) -----------------------------------------------------------
PKI=$OUT/pki
cert() { # name, CN, O, [SANs]
  local n=$1 cn=$2 o=$3 san=${4:-}
  [ -f "$PKI/$n.crt" ] && return
  openssl genrsa -out "$PKI/$n.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$n.key" -subj "/CN=$cn${o:+/O=$o}" -out "$PKI/$n.csr" 2>/dev/null
  local ext="$PKI/$n.ext"
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=digitalSignature,keyEncipherment";
    echo "extendedKeyUsage=serverAuth,clientAuth"; [ -n "$san" ] && echo "subjectAltName=$san"; } >"$ext"
  openssl x509 -req -in "$PKI/$n.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
    -extfile "$ext" -out "$PKI/$n.crt" 2>/dev/null
}
if [ ! -f "$PKI/ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -subj "/CN=sluice-e2e-ca" -days 30 \
    -out "$PKI/ca.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
cert apiserver kube-apiserver "" "IP:127.0.0.1,IP:$IP,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin admin system:masters
cert node "system:node:$NODE" system:nodes "IP:$IP,DNS:$NODE"
cert controller-manager system:kube-controller-manager ""
cert scheduler system:kube-scheduler ""

kubeconfig() { # file, cert name
  cat >"$OUT/$1" <<KC
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://$IP:6443", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: u, user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: u}}]
current-context: e2e
KC
}
kubeconfig kubeconfig admin
kubeconfig kubelet.kubeconfig node
kubeconfig controller-manager.kubeconfig controller-manager
kubeconfig scheduler.kubeconfig scheduler

# --- control plane -------------------------------------------------------------
start etcd etcd --name e2e --data-dir "$OUT/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster e2e=http://127.0.0.1:2380
start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$IP" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" --client-ca-file="$PKI/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.96.0.0/24 --authorization-mode=Node,RBAC --allow-privileged=true \
  --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname --feature-gates=CSIVolumeHealth=true \
  --enable-priority-and-fairness=false --enable-aggregator-routing=true
KUBECTL_CURL=(curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
for i in $(seq 1 120); do "${KUBECTL_CURL[@]}" "https://$IP:6443/readyz" >/dev/null && break; sleep 0.5; done
"${KUBECTL_CURL[@]}" "https://$IP:6443/readyz" >/dev/null || { echo "kube-apiserver not ready; see $OUT/logs" >&2; exit 1; }
start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig="$OUT/controller-manager.kubeconfig" \
  --leader-elect=false --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key"
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$OUT/scheduler.kubeconfig" --leader-elect=false
# Cluster DNS (Services and StatefulSet pods, from EndpointSlices) on the node
# IP, which the kubelet gives pods as their nameserver.
start dns "$OUT/bin/dns" --kubeconfig="$OUT/kubeconfig" --listen="$IP:53"
# No kube-proxy runs: route the kubernetes Service (10.96.0.1:443), which
# in-cluster clients use, to the API server. Pods come through PREROUTING,
# host-network pods through OUTPUT.
for chain in PREROUTING OUTPUT; do
  rule=(-d 10.96.0.1/32 -p tcp --dport 443 -m comment --comment sluice-e2e -j DNAT --to-destination "$IP:6443")
  iptables -t nat -C "$chain" "${rule[@]}" 2>/dev/null || iptables -t nat -A "$chain" "${rule[@]}"
done

# --- node: cgroups, containerd, CNI, images, kubelet -------------------------------
CGROOT=sluice-e2e
for h in /sys/fs/cgroup/*/; do
  case $h in */unified/) continue;; esac
  mkdir -p "$h$CGROOT"
  if [ -f "${h}cpuset.cpus" ]; then
    cat "${h}cpuset.cpus" >"$h$CGROOT/cpuset.cpus"; cat "${h}cpuset.mems" >"$h$CGROOT/cpuset.mems"
  fi
done
cat >"$OUT/cni/conf/10-bridge.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "e2e", "plugins": [
  {"type": "bridge", "bridge": "sluice-e2e0", "isGateway": true, "isDefaultGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "dataDir": "$OUT/cni/data"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
CNI
CTRD=$OUT/containerd
cat >"$CTRD/config.toml" <<CT
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
[grpc]
  address = "$CTRD/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "sluice.local/pause:e2e"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$OUT/cni/conf"
CT
start containerd containerd --config "$CTRD/config.toml"
for i in $(seq 1 60); do [ -S "$CTRD/containerd.sock" ] && break; sleep 0.5; done
for tar in "$OUT"/images/*.tar; do
  ctr -n k8s.io --address "$CTRD/containerd.sock" images import "$tar" >/dev/null
done
mkdir -p "$OUT/kubelet/root"
# The kubelet changes these sysctls; cluster-down puts them back.
[ -f "$OUT/sysctl.orig" ] || for k in kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward; do
  echo "$k=$(sysctl -n $k)"; done >"$OUT/sysctl.orig"
sysctl -qw net.ipv4.ip_forward=1
cat >"$OUT/kubelet/config.yaml" <<KCFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CTRD/containerd.sock
podLogsDir: $OUT/pod-logs
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROOT
failSwapOn: false
clusterDNS: [$IP]
clusterDomain: cluster.local
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: "$PKI/ca.crt"}}
authorization: {mode: Webhook}
tlsCertFile: $PKI/node.crt
tlsPrivateKeyFile: $PKI/node.key
featureGates: {CSIVolumeHealth: true}
# The node's disk is shared with whatever else runs on the machine, so its
# fullness says nothing about this cluster: no image garbage collection (it
# would delete the locally imported pause and sluice images, which no registry
# can give back) and no disk-pressure eviction short of a nearly full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1Gi, imagefs.available: 1Gi, nodefs.inodesFree: 1%}
volumeStatsAggPeriod: 10s
KCFG
start kubelet "$K8S_BIN/kubelet" --config="$OUT/kubelet/config.yaml" --kubeconfig="$OUT/kubelet.kubeconfig" \
  --root-dir="$OUT/kubelet/root" --hostname-override="$NODE" --node-ip="$IP" --cert-dir="$OUT/kubelet/pki"
echo "$IP" >"$OUT/node-ip"

# --- an S3 origin pods can reach (versitygw on the node IP) -------------------------
if [ ! -f "$OUT/origin.env" ]; then
  cat >"$OUT/origin.env" <<ENV
S3_ENDPOINT=http://$IP:9000
AWS_ACCESS_KEY_ID=e2e$(openssl rand -hex 6)
AWS_SECRET_ACCESS_KEY=$(openssl rand -hex 20)
ENV
fi
# shellcheck disable=SC1091
. "$OUT/origin.env"
mkdir -p "$OUT/origin-data"
start origin "$BIN/versitygw" --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" --port "$IP:9000" \
  posix "$OUT/origin-data"

echo "cluster-up: waiting for node $NODE to be Ready"
ready=""
for i in $(seq 1 180); do
  if "${KUBECTL_CURL[@]}" "https://$IP:6443/api/v1/nodes/$NODE" 2>/dev/null | tr -d ' \n' | grep -q '"type":"Ready","status":"True"'; then
    ready=1; break
  fi
  sleep 1
done
[ -n "$ready" ] || { echo "cluster-up: node $NODE not Ready after 180 s; see $OUT/logs/kubelet.log" >&2; exit 1; }
API="https://$IP:6443/api/v1"
"${KUBECTL_CURL[@]}" -X PATCH -H 'Content-Type: application/merge-patch+json' "$API/nodes/$NODE" \
  -d '{"metadata":{"labels":{"sluice.dev/e2e":"true"}}}' >/dev/null
# A serverless node: a Node object with the virtual-kubelet label and taint and
# no kubelet behind it, so scheduling intent can be tested (pods that must run
# go to the real node).
"${KUBECTL_CURL[@]}" -X POST -H 'Content-Type: application/json' "$API/nodes" -d '{"metadata":{"name":"virtual-e2e",
  "labels":{"type":"virtual-kubelet","kubernetes.io/hostname":"virtual-e2e"}},
  "spec":{"taints":[{"key":"virtual-kubelet.io/provider","value":"e2e","effect":"NoSchedule"}]}}' >/dev/null 2>&1 || true
echo "cluster-up: node $NODE is Ready; kubeconfig: $OUT/kubeconfig; origin: $OUT/origin.env"
