package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/sluice-dev/sluice/internal/app"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/metrics"
	"github.com/sluice-dev/sluice/internal/mountutil"
	"github.com/sluice-dev/sluice/internal/volattr"
)

// Modes of `sluice csi`.
const (
	ModeController = "controller"
	ModeNode       = "node"
	ModeAll        = "all"
)

// Options are the options of `sluice csi`.
type Options struct {
	Mode        string
	Endpoint    string
	NodeID      string
	StateDir    string
	CacheDir    string
	CacheMemory string
	Kubeconfig  string
	ServeWait   time.Duration
	// ClusterDomain completes the Service names of Datasets' cache
	// workers.
	ClusterDomain string
	// WorkerTokenFile is the node's projected service-account token
	// (audience sluice.dev) that dataset sessions present to the workers.
	WorkerTokenFile string
	// WorkerTLS verifies the workers (the CA bundle the controller
	// publishes, mounted at contract.CABundleDir).
	WorkerTLS app.TLSFlags
	// SessionCgroup moves serving children into this cgroup (below
	// CgroupRoot), so they outlive the plugin's container.
	SessionCgroup, CgroupRoot string
	// Provision makes the controller provision PVCs itself (no
	// csi-provisioner sidecar).
	Provision bool
	// RegistrationDir is the kubelet's plugin registration directory; set,
	// the node plugin registers itself (no node-driver-registrar needed).
	RegistrationDir string
	// KubeletEndpoint is the CSI socket's path as the kubelet sees it
	// (default: the --endpoint path).
	KubeletEndpoint string
	// Binary is the sluice binary that serves sessions (default: this one).
	Binary string
	// ChildArgs are passed on to every serve-session (e.g. -v=4).
	ChildArgs []string
	// MetricsAddr serves the node's volume health as metrics.
	MetricsAddr string
}

// AddFlags registers the flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Mode, "mode", ModeAll, "which CSI services to serve: controller, node or all")
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix:///path/csi.sock)")
	fs.StringVar(&o.NodeID, "node-id", "", "this node's name (required for --mode node and all)")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/kubelet/plugins/"+contract.DriverName+"/state",
		"where staged volumes and created volumes are recorded (no secrets); survives restarts")
	fs.StringVar(&o.CacheDir, "cache-dir", "/var/cache/sluice", "disk cache tier, one subdirectory per dataset session (\"\" disables it)")
	fs.StringVar(&o.CacheMemory, "cache-memory", "256Mi", "memory cache tier of each dataset session")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig for API access: Datasets of dataset volumes, and --provision "+
		"(in-cluster config when empty; outside a cluster without it, dataset volumes fail)")
	fs.StringVar(&o.ClusterDomain, "cluster-domain", "cluster.local", "cluster DNS domain (completes the Dataset workers' Service names)")
	fs.StringVar(&o.SessionCgroup, "session-cgroup", "", "node: move each FUSE session into this cgroup at the root of every hierarchy under --cgroup-root, "+
		"so sessions outlive a restart of the plugin's container (with hostPID); empty: sessions stay with the plugin")
	fs.StringVar(&o.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "where the host's cgroup hierarchies are mounted (in a container: a hostPath)")
	fs.StringVar(&o.WorkerTokenFile, "worker-token-file", contract.TokenDir+"/"+contract.TokenFile,
		"node: projected service-account token (audience "+contract.TokenAudience+") that dataset volumes present to the cache workers")
	o.WorkerTLS.AddFlags(fs, contract.CABundleDir+"/"+contract.CABundleKey)
	fs.BoolVar(&o.Provision, "provision", false, "controller: provision PVCs of StorageClasses with provisioner "+
		"csi.sluice.dev itself, with leader election (leave off when a csi-provisioner sidecar does it)")
	fs.StringVar(&o.RegistrationDir, "registration-dir", "",
		"kubelet plugin registration directory (e.g. /var/lib/kubelet/plugins_registry): register with the kubelet "+
			"without the node-driver-registrar sidecar; empty: leave registration to the sidecar")
	fs.StringVar(&o.KubeletEndpoint, "kubelet-endpoint", "", "the CSI socket's path as the kubelet sees it (default: the --endpoint path)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", "", "node: address of /metrics (every volume's health, sluice_csi_volume_*); empty: none")
	fs.DurationVar(&o.ServeWait, "serve-timeout", 60*time.Second, "how long a dataset session may take to start serving")
	fs.StringVar(&o.Binary, "serve-binary", "", "sluice binary that serves the FUSE sessions (default: this executable)")
	_ = fs.MarkHidden("serve-binary")
}

// Validate checks the options.
func (o *Options) Validate() error {
	switch o.Mode {
	case ModeController, ModeNode, ModeAll:
	default:
		return fmt.Errorf("--mode %q: want controller, node or all", o.Mode)
	}
	if o.Endpoint == "" {
		return fmt.Errorf("--endpoint is required")
	}
	if o.Mode != ModeController && o.NodeID == "" {
		return fmt.Errorf("--node-id is required with --mode %s", o.Mode)
	}
	if o.Mode != ModeController && !filepath.IsAbs(o.StateDir) {
		return fmt.Errorf("--state-dir %q: want an absolute path", o.StateDir)
	}
	if o.CacheDir != "" && !filepath.IsAbs(o.CacheDir) {
		return fmt.Errorf("--cache-dir %q: want an absolute path", o.CacheDir)
	}
	if q, err := resource.ParseQuantity(o.CacheMemory); err != nil || q.Value() < volattr.MinCacheSize {
		return fmt.Errorf("--cache-memory %q: want a size of at least 1Mi", o.CacheMemory)
	}
	if o.RegistrationDir != "" && (o.Mode == ModeController || !filepath.IsAbs(o.RegistrationDir)) {
		return fmt.Errorf("--registration-dir %q: want an absolute path, with --mode node or all", o.RegistrationDir)
	}
	if o.KubeletEndpoint != "" && !filepath.IsAbs(o.KubeletEndpoint) {
		return fmt.Errorf("--kubelet-endpoint %q: want an absolute path", o.KubeletEndpoint)
	}
	if o.Provision && o.Mode == ModeNode {
		return fmt.Errorf("--provision needs --mode controller or all")
	}
	if o.ClusterDomain == "" {
		return fmt.Errorf("--cluster-domain is required")
	}
	if o.Mode != ModeController && !filepath.IsAbs(o.WorkerTokenFile) {
		return fmt.Errorf("--worker-token-file %q: want an absolute path", o.WorkerTokenFile)
	}
	if o.SessionCgroup != "" && (filepath.Base(o.SessionCgroup) != o.SessionCgroup || o.SessionCgroup == ".." || !filepath.IsAbs(o.CgroupRoot)) {
		return fmt.Errorf("--session-cgroup %q with --cgroup-root %q: want a plain cgroup name and an absolute root", o.SessionCgroup, o.CgroupRoot)
	}
	if o.ServeWait <= 0 {
		return fmt.Errorf("--serve-timeout %s: must be positive", o.ServeWait)
	}
	return nil
}

// Run serves the CSI services until ctx is done. In node mode it first
// reconciles the sessions recorded in the state directory, so kubelet's
// first call after a restart sees every volume as it was.
func (o *Options) Run(ctx context.Context) error {
	svc := services{identity: &identityServer{controller: o.Mode != ModeNode}}
	datasets, err := newDatasetResolver(o.Kubeconfig)
	if err != nil {
		return err
	}
	if o.Mode != ModeNode {
		stateDir := ""
		if o.Mode == ModeAll {
			stateDir = o.StateDir
		}
		c, err := newControllerServer(stateDir)
		if err != nil {
			return err
		}
		c.datasets = datasets
		svc.controller = c
		if o.Provision {
			if err := runProvisioner(ctx, c, o.Kubeconfig); err != nil {
				return err
			}
		}
	}
	if o.Mode != ModeController {
		bin := o.Binary
		if bin == "" {
			if bin, err = os.Executable(); err != nil {
				return fmt.Errorf("finding the sluice binary: %w", err)
			}
		}
		keeper := &fdKeeper{}
		l := &procLauncher{binary: bin, wait: o.ServeWait, tokenFile: o.WorkerTokenFile,
			cgroup: o.SessionCgroup, cgroupRoot: o.CgroupRoot, keeper: keeper,
			args: append([]string{"--cache-memory", o.CacheMemory}, o.ChildArgs...), workerTLS: o.WorkerTLS.Args()}
		n, err := newNodeServer(o.NodeID, o.StateDir, o.CacheDir, sessionDeps{launcher: l, conns: keeper,
			mounter: mount.NewWithoutSystemd(""), unmount: mountutil.Unmount})
		if err != nil {
			return err
		}
		n.datasets, n.clusterDomain = datasets, o.ClusterDomain
		if err := n.sessions.reconcile(ctx); err != nil {
			return fmt.Errorf("reconciling %s: %w", o.StateDir, err)
		}
		go n.sessions.watch(ctx, time.Second, l.exits())
		svc.node = n
		if o.MetricsAddr != "" {
			reg := metrics.NewRegistry()
			reg.MustRegister(&volumeCollector{sessions: n.sessions})
			srv, err := metrics.Serve(o.MetricsAddr, reg)
			if err != nil {
				return fmt.Errorf("--metrics-addr: %w", err)
			}
			defer srv.Close()
		}
	}
	ln, path, err := listen(o.Endpoint)
	if err != nil {
		return err
	}
	klog.InfoS("CSI driver serving", "mode", o.Mode, "endpoint", path, "nodeID", o.NodeID)
	if o.RegistrationDir != "" {
		kubeletPath := o.KubeletEndpoint
		if kubeletPath == "" {
			kubeletPath = path
		}
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if err := serveRegistration(rctx, o.RegistrationDir, kubeletPath); err != nil {
			ln.Close()
			return err
		}
	}
	return serve(ctx, newGRPCServer(svc), ln)
}

// newNodeServer builds the node service over its state directory.
func newNodeServer(nodeID, stateDir, cacheDir string, deps sessionDeps) (*nodeServer, error) {
	dir := filepath.Join(stateDir, "sessions")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	return &nodeServer{nodeID: nodeID, sessions: &sessionManager{
		dir: dir, cacheDir: cacheDir, sessionDeps: deps, sessions: map[string]*session{},
	}}, nil
}
