// Package driver is the CSI driver csi.sluice.dev, run as `sluice csi`:
// one file per CSI service (identity.go, controller.go, node.go), the gRPC
// plumbing (server.go) and the one place where errors become gRPC codes
// (errors.go). The node's FUSE sessions (sessions.go) are served by child
// processes, `sluice csi serve-session` (servesession.go), which the
// launcher starts and supervises (launcher.go) and which report to it on a
// pipe (readypipe.go); the keeper holds their FUSE connections
// (keeper.go); their records are package driver/state.
//
// # Volumes
//
// A volume is a read-only view of a dataset. Its attributes (StorageClass
// parameters, PV volumeAttributes or inline volumeAttributes) name a
// source URL or a Dataset, and optionally subPath, cacheSize, readahead
// and smallFiles (internal/volattr: the webhook applies the same rules). CreateVolume
// validates them and returns them as the volume context, so a static PV
// and an inline volume carry the same information as a provisioned one. Only reader access modes are accepted.
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
// The node serves volumes with FUSE sessions (sessions.go): a child
// process, `sluice csi serve-session`, mounts the source (or Dataset)
// read-only with its own memory and disk cache (<cache-dir>/<key>).
//
//   - A staged volume has a session of its own, mounted at the staging
//     path itself: the kubelet unstages a volume only when no other mount
//     of its device exists, so a staged session keeps no mount beside it.
//     NodePublishVolume binds the staging path, or its subPath, read-only
//     at each pod's target, so every pod using the volume shares its
//     session and cache and the node reads the origin once for them.
//   - Inline volumes of the same source (or Dataset) and credentials share
//     one session, mounted at <state-dir>/sessions/<key>/mnt and bound at
//     each target.
//
// A session ends with its last stage or inline volume. Volumes with other
// credentials never share a session (the key hashes them), nor do source
// and dataset volumes. What the node remembers of a session, and the
// files of its directory, are package driver/state.
//
// # Surviving restarts
//
// Two processes serve a session, and either may die without a reader
// noticing:
//
//   - The keeper, this `sluice csi` node process, opens /dev/fuse and
//     mounts it (mount(2) with fd=N, fusefs.MountFD), then starts the
//     serving child with the descriptor inherited, and keeps its own
//     copy for the connection's life (keeper.go). The kernel keeps a FUSE
//     connection while any process holds its descriptor.
//   - The serving child, `sluice csi serve-session --fuse-fd 4`, serves
//     that descriptor (fusefs.ServeFD). It runs in its own session
//     (setsid), logs to a file and reports readiness on a pipe: nothing
//     ties it to the node process.
//
// The node process dies (kill -9 included): the child keeps serving. The
// restarted node reads <state-dir>/sessions/<key>/session.json (source or
// Dataset, pid and start time, generation, the paths bound; never a
// secret), adopts each live child, reads its credentials back from
// /proc/PID/environ, and takes the descriptor back over the child's
// handback socket (fuse.sock in the session directory, SCM_RIGHTS, root
// only).
//
// The child dies (kill -9 included): the kernel, whose connection the
// keeper's descriptor holds open, queues the readers' requests. The node
// learns of the death at once (it waits on the children it started, and
// polls a pidfd of those it adopted; a one-second check catches the rest)
// and starts a new child with the same descriptor and --resume, which
// takes the connection over — same mount, same binds, no ENOTCONN:
//
//   - INIT. go-fuse reads INIT first, and the kernel sends it once. The
//     first child records the INIT it got (fuse-init); a successor gives
//     its go-fuse server that INIT on a socket pair, drops the reply (the
//     same options negotiate the same), and dup's the FUSE descriptor over
//     the socket before serving.
//   - Requests in flight. Once every thread of the dead child is gone, the
//     successor sends FUSE_NOTIFY_RESEND (Linux >= 6.9): the kernel queues
//     again every request the dead child had read but not answered. All
//     are idempotent on a read-only file system. One window is left to the
//     kernel: a request that a thread of the child takes from the queue in
//     the instant SIGKILL lands (the kernel looks for requests before the
//     signal) fails to copy to the dying reader, and the kernel ends it
//     with EIO.
//   - Node ids. A node id is the inode number (a hash of path and object
//     version). Every child appends the path of each node it hands the
//     kernel to an inode log (inodes); a request on an id the successor
//     does not know makes it look the id up ("." through go-fuse's
//     NodeLookupNoder), which finds the path in the log and the entry in
//     the listing cache (an object changed since is ESTALE). FORGET counts are
//     trimmed to what the successor handed out; READDIRPLUS is off so that
//     every node id passes through LOOKUP.
//   - File handles carry the child's generation in their top bits; a
//     handle of an earlier generation is opened again on first use.
//   - IO modes. The kernel refuses (EIO) an open whose io mode differs
//     from the inode's open files' — passthrough while files are open in
//     cached mode, cached mode while passthrough files are open, or
//     another backing file. Every child records each file handle it hands
//     out, its node, mode and backing id, and each release, in an open log
//     (opens); a successor counts those files with its own and answers
//     every open to match, reusing the dead child's backing id (still
//     registered: the id is closed only after its last release is
//     recorded).
//
// If the node process and the child die together (the node pod deleted),
// the connection ends; the restarted node detaches the stale mount, serves
// again and re-binds every recorded path (new opens work; files open on
// the old mount get ENOTCONN). A session that needs secrets waits for the
// next NodeStageVolume, which brings them.
//
// In Kubernetes a container restart kills every process of the
// container's cgroup (and, without hostPID, of its PID namespace),
// children included. With --session-cgroup the launcher moves each child,
// right after it starts, into that cgroup at the root of every hierarchy
// under --cgroup-root (the host's, mounted into the pod), and the node pod
// runs with hostPID (deploy/base/node.yaml): a restart of the plugin's
// container — kill -9 of its process included — leaves the sessions
// serving, and the restarted plugin adopts them from the state directory.
package driver
