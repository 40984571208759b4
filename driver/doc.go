// Package driver is the CSI driver csi.sluice.dev, run as `sluice csi`:
// one file per CSI service (identity.go, controller.go, node.go), the gRPC
// plumbing (server.go) and the one place where errors become gRPC codes
// (errors.go).
//
// # Volumes
//
// A volume is a read-only view of a dataset. Its attributes (StorageClass
// parameters, PV volumeAttributes or inline volumeAttributes) name a
// source URL or a Dataset, and optionally subPath, cacheSize and readahead
// (params.go). CreateVolume validates them and returns them as the volume
// context, so a static PV and an inline volume carry the same information
// as a provisioned one. Only reader access modes are accepted.
//
// A dataset volume names a Dataset (sluice.dev/v1alpha1) as "name" (in
// the volume's namespace: the PVC's for CreateVolume, the pod's for an
// inline volume) or "namespace/name"; a static PV must name both.
// CreateVolume checks that the Dataset exists and puts namespace/name in
// the volume context (datasets.go: one API read, NotFound when missing,
// FailedPrecondition without the Dataset API or API access). The node
// serves it through the Dataset's cache workers (its status.workers, else
// its headless Service in --cluster-domain) with its own projected token
// (--worker-token-file, audience sluice.dev): origin credentials stay
// with the workers and a dataset volume never takes secrets.
//
// Access: the workers trust the node plugin's service account for every
// namespace, so the node checks each pod itself. NodePublishVolume of a
// dataset volume (staged or inline) reads the Dataset and admits the pod
// only if its namespace (csi.storage.k8s.io/pod.namespace, podInfoOnMount)
// is the Dataset's or in spec.access.namespaces: else PermissionDenied
// naming both; without pod info, FailedPrecondition.
//
// # Sessions
//
// The node serves each (source, credentials) pair, or Dataset, with one
// FUSE session (sessions.go): a child process, `sluice csi serve-session`,
// mounts the source at <state-dir>/sessions/<key>/mnt with its own memory
// and disk cache (<cache-dir>/<key>). NodeStageVolume binds that mount read-only at
// the staging path; NodePublishVolume binds the staging path, or its
// subPath, read-only at the target. Every volume of the same dataset on a
// node therefore shares one session and one cache, and reads the origin
// once. Inline volumes bind the session directly at their target; the
// session ends with its last stage or inline volume. Volumes with other
// credentials never share a session (the key hashes them), nor do source
// and dataset volumes.
//
// # Surviving restarts
//
// The serving child runs in its own session (setsid) with its output in a
// log file and readiness reported on a pipe that it closes once serving:
// nothing ties it to the `sluice csi` process, so that process may be
// restarted — kill -9 included — without a reader noticing. The node
// records each session in <state-dir>/sessions/<key>/session.json (source,
// or Dataset and workers' address; pid and start time, the staging paths
// and targets bound to it; never a secret; NeedsCreds says whether it had
// any). On start it reconciles:
// live children (pid and start time match) are adopted and their
// credentials read back from /proc/PID/environ into memory; dead ones are
// served again and every recorded path re-bound when they need no secrets,
// else they wait for the next NodeStageVolume, which brings the secrets.
// While running, a watch serves again within about a second any session
// whose child died, and re-binds its paths: new opens succeed again, while
// reads in flight at the moment of the crash fail (ENOTCONN).
//
// In Kubernetes a container restart kills every process of the
// container's cgroup (and, without hostPID, of its PID namespace),
// children included. With --session-cgroup the launcher moves each child,
// right after it starts, into that cgroup at the root of every hierarchy
// under --cgroup-root (the host's, mounted into the pod), and the node pod
// runs with hostPID (deploy/base/node.yaml): a restart of the plugin's
// container — kill -9 of its process included — leaves the sessions
// serving, and the restarted plugin adopts them from the state directory.
// The e2e suite kills the plugin's process while a pod reads its volume
// 60 times; no read fails.
//
// # File-descriptor retention (design, not implemented yet)
//
// What is left: a serving child that dies is replaced by a new mount at
// the same path, so files opened on the old mount fail (ENOTCONN) and
// reads in flight fail. The design that removes this:
//
//   - The keeper (the node process, or a tiny fd-keeper container of the
//     node pod) opens /dev/fuse, mounts with mount(2) "fd=N", and holds
//     the descriptor for the session's whole life: while any process holds
//     it the kernel keeps the connection and queues requests.
//   - The serving child does not read /dev/fuse itself: the keeper relays
//     messages over a SOCK_SEQPACKET socketpair (message boundaries kept),
//     whose other end the child serves as go-fuse's "/dev/fd/N" mount
//     point. The keeper records the FUSE_INIT request, and every request
//     read but not answered (by unique id).
//   - A replacement child gets a new socketpair end (SCM_RIGHTS); the
//     keeper replays the recorded INIT (discarding the second INIT reply)
//     and then every unanswered request — all idempotent on a read-only
//     file system — so nothing in flight is lost and nothing is remounted.
//   - The kernel's node ids and file handles were handed out by the dead
//     child, and go-fuse's bridge panics on unknown ones. Inode numbers
//     are already stable (fusefs: hash of path and version) and go-fuse
//     uses them as node ids, so the keeper, which sees LOOKUP replies
//     (node id ↔ parent, name) and OPEN replies (handle ↔ node id), sends
//     the new child a LOOKUP "." (go-fuse's NodeLookupNoder) for each node
//     id before its first use, re-opens each handle, rewrites handles in
//     requests, and trims FORGET counts to what the new child has seen.
//   - Costs: one copy per message through the keeper, and no FUSE
//     passthrough for relayed sessions (its ioctl needs the /dev/fuse fd).
package driver
