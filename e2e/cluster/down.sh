#!/usr/bin/env bash
# make cluster-down: stop what cluster-up started (by PID), unmount what it
# left, undo its side effects. Safe to run twice.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/_output/e2e
stop() {
  local f=$OUT/pids/$1.pid
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
}
for p in origin kubelet; do stop $p; done
# Pods' containers: containerd-shim processes started under our state dir.
pkill -f "containerd-shim.*$OUT/containerd" 2>/dev/null
# Container processes a dead shim left behind: everything in the cluster's
# cgroups (the kubelet's cgroupRoot).
for procs in $(find /sys/fs/cgroup/*/sluice-e2e -name cgroup.procs 2>/dev/null); do
  xargs -r kill -9 <"$procs" 2>/dev/null
done
stop containerd
# FUSE sessions of the CSI node plugin live outside its container (their
# own cgroup, the host PID namespace): stop them, then their cgroups.
pkill -f "serve-session.*$OUT" 2>/dev/null
for i in $(seq 1 50); do pgrep -f "serve-session.*$OUT" >/dev/null || break; sleep 0.1; done
pkill -9 -f "serve-session.*$OUT" 2>/dev/null
for d in /sys/fs/cgroup/*/sluice-csi-sessions /sys/fs/cgroup/sluice-csi-sessions; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
# The API server goes before etcd (else it hangs).
for p in dns kube-scheduler kube-controller-manager kube-apiserver etcd; do stop $p; done
for chain in PREROUTING OUTPUT; do
  while iptables -t nat -S "$chain" 2>/dev/null | grep -q sluice-e2e; do
    rule=$(iptables -t nat -S "$chain" | grep sluice-e2e | head -n1 | sed 's/^-A /-D /')
    eval iptables -t nat "$rule" || break
  done
done
# Mounts left below _output/e2e (pod volumes, FUSE mounts of Bidirectional
# pods, netns, overlay snapshots), deepest first.
grep -F " $OUT" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
ip link delete sluice-e2e0 2>/dev/null
for chain in $(iptables-save 2>/dev/null | grep -o '^:KUBE-[A-Z0-9-]*' | tr -d ':'); do
  iptables -F "$chain" 2>/dev/null; done
# The kubelet's KUBE-* chains and the CNI portmap plugin's CNI-* chains
# (hostPorts): a stale hostPort rule would send the next cluster's traffic
# to a pod IP that no longer exists.
for t in filter nat mangle; do
  iptables -t $t -S 2>/dev/null | grep -E '^-A (PREROUTING|INPUT|OUTPUT|POSTROUTING|FORWARD) .*-j CNI-' | sed 's/^-A /-D /' |
    while read -r rule; do eval iptables -t $t "$rule" 2>/dev/null; done
  for chain in $(iptables -t $t -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/{print $2}'); do
    iptables -t $t -F "$chain" 2>/dev/null; done
  for chain in $(iptables -t $t -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/{print $2}'); do
    iptables -t $t -X "$chain" 2>/dev/null; done
done
if [ -f "$OUT/sysctl.orig" ]; then
  while IFS= read -r kv; do sysctl -qw "$kv"; done <"$OUT/sysctl.orig"
  rm -f "$OUT/sysctl.orig"
fi
for h in /sys/fs/cgroup/*/sluice-e2e; do [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null; done
rm -rf /var/lib/kubelet/device-plugins/kubelet.sock /var/log/containers/*_sluice* 2>/dev/null
echo "cluster-down: done"
