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
// In Kubernetes a container restart kills every process of the container,
// children included. For the node plugin to survive its own restart there
// the serving children must live outside its container; the fd-retention
// design below removes that need.
//
// # File-descriptor retention (design, not implemented yet)
//
// Goal: killing either the gRPC process or a serving child never makes a
// mount answer ENOTCONN, and no mount is ever replaced.
//
//   - The serving child opens /dev/fuse and mounts itself (the
//     mount(2) "fd=N" option), instead of go-fuse's fusermount path, so
//     that it owns the connection's file descriptor from the start.
//   - It passes a duplicate of that descriptor to a keeper over a unix
//     socket (SCM_RIGHTS, internal/mountutil). The keeper is the node
//     process, or — so that a container restart is survived too — a tiny
//     `sluice csi fd-keeper` process in a second container of the node pod
//     that only holds descriptors and answers "give me the fd of session K".
//     While any process holds the descriptor the kernel keeps the FUSE
//     connection; requests queue in the kernel instead of failing.
//   - A replacement child asks the keeper for the descriptor and serves the
//     same connection: no remount, same mount point, same binds. Requests
//     the dead child had read but not answered are lost (the kernel does not
//     replay them); the replacement must answer FUSE_INIT-less, so go-fuse's
//     server has to start in "already initialised" mode, and the kernel's
//     node ids (handed out by the dead child) must resolve: each child keeps
//     a node-id → path table in a memory-backed file next to the
//     descriptor, and the new child loads it before serving (go-fuse
//     inode numbers are derived from path and version already, fusefs.ino).
//   - Symmetrically, when the keeper restarts, each live child sends it its
//     descriptor again.
package driver
