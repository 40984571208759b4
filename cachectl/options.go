package cachectl

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/kubeauth"
	"github.com/sluice-dev/sluice/internal/pki"
	"github.com/sluice-dev/sluice/internal/source"
)

// Options are the options of `sluice controller`.
type Options struct {
	Kubeconfig     string
	MetricsAddr    string
	HealthAddr     string
	HeartbeatAddr  string
	LeaderElect    bool
	LeaderNS       string
	WorkerImage    string
	PullPolicy     string
	ClusterDomain  string
	WorkersAsRoot  bool
	Resync         time.Duration
	DemandWindow   time.Duration
	WorkerNodeSel  map[string]string
	Trusted        []string
	TokenFile      string
	Preload        bool
	WorkersTLS     bool
	Namespace      string
	ServiceName    string
	OwnerRole      string
	templateParsed WorkerTemplate
	// preloadOpen replaces the workers' source of preloads (tests).
	preloadOpen func(ctx context.Context, ds *v1alpha1.Dataset) (source.Source, func(), error)
}

// AddFlags registers the flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig (in-cluster config when empty)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":8080", "Prometheus metrics address (\"0\" disables)")
	fs.StringVar(&o.HealthAddr, "health-addr", ":8081", "address of /healthz and /readyz")
	fs.StringVar(&o.HeartbeatAddr, "heartbeat-addr", ":8090", "address of the sidecars' heartbeat endpoint "+contract.HeartbeatPath)
	fs.BoolVar(&o.LeaderElect, "leader-elect", true, "elect one active controller (a Lease)")
	fs.StringVar(&o.LeaderNS, "leader-election-namespace", "", "namespace of the Lease (default: the pod's namespace)")
	fs.StringVar(&o.WorkerImage, "worker-image", "", "image of the cache workers (default: the controller's own image, read from its pod via POD_NAME/POD_NAMESPACE)")
	fs.StringVar(&o.PullPolicy, "worker-image-pull-policy", string(corev1.PullIfNotPresent), "Always, IfNotPresent or Never")
	fs.StringVar(&o.ClusterDomain, "cluster-domain", "cluster.local", "cluster DNS domain (completes the workers' Service names)")
	fs.BoolVar(&o.WorkersAsRoot, "workers-as-root", false, "run cache workers as root (default: UID 65532)")
	fs.DurationVar(&o.Resync, "resync", 10*time.Second, "how often each Dataset's demand is looked at again")
	fs.DurationVar(&o.DemandWindow, "demand-window", 30*time.Second, "how long a sidecar's last heartbeat counts")
	fs.StringSliceVar(&o.Trusted, "trusted-service-accounts", []string{"sluice-system/sluice-csi-node", "sluice-system/sluice-controller"},
		"service accounts (namespace/name) the cache workers admit from any namespace: the CSI node plugin, which checks each pod's access itself, and the controller (preload)")
	fs.StringVar(&o.TokenFile, "worker-token-file", "/var/run/secrets/sluice.dev/token", "the controller's projected token (audience sluice.dev), presented to the workers when preloading")
	fs.BoolVar(&o.Preload, "preload", true, "warm the workers with each Dataset's spec.preload and, when the pods of a burst are admitted, with what the last burst read first (status.firstReads)")
	fs.BoolVar(&o.WorkersTLS, "tls", true, "run a CA (the Secret "+contract.CASecret+" of --namespace): the workers and the heartbeat endpoint serve TLS, and the CA bundle is published as the ConfigMap "+contract.CABundleConfigMap+" wherever a Dataset's readers run")
	fs.StringVar(&o.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the controller's namespace (its CA Secret; the CSI node plugin's copy of the bundle)")
	fs.StringVar(&o.ServiceName, "service-name", "sluice-controller", "the controller's Service, named by the heartbeat endpoint's certificate")
	fs.StringVar(&o.OwnerRole, "owner-cluster-role", "", "the ClusterRole this controller runs under: it owns the CA Secret and the CA bundle ConfigMaps, so that removing the installation (helm uninstall, kubectl delete) removes them (empty: no owner)")
	fs.StringToStringVar(&o.WorkerNodeSel, "worker-node-selector", nil, "node selector of the cache workers (k=v,...)")
}

// Validate checks the flags.
func (o *Options) Validate() error {
	if o.WorkerImage == "" && (os.Getenv("POD_NAME") == "" || os.Getenv("POD_NAMESPACE") == "") {
		return errors.New("--worker-image is required outside a pod (the sluice image the cache workers run)")
	}
	switch p := corev1.PullPolicy(o.PullPolicy); p {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return fmt.Errorf("--worker-image-pull-policy %q: want Always, IfNotPresent or Never", o.PullPolicy)
	}
	if _, _, err := net.SplitHostPort(o.HeartbeatAddr); err != nil {
		return fmt.Errorf("--heartbeat-addr %q: %w", o.HeartbeatAddr, err)
	}
	for _, sa := range o.Trusted {
		if ns, name, ok := strings.Cut(sa, "/"); !ok || ns == "" || name == "" {
			return fmt.Errorf("--trusted-service-accounts %q: want namespace/name", sa)
		}
	}
	if o.Resync <= 0 || o.DemandWindow <= 0 {
		return errors.New("--resync and --demand-window must be positive")
	}
	if o.WorkersTLS && (o.Namespace == "" || o.ServiceName == "") {
		return errors.New("--tls needs --namespace (default $POD_NAMESPACE) and --service-name")
	}
	o.templateParsed = WorkerTemplate{Image: o.WorkerImage, ImagePullPolicy: corev1.PullPolicy(o.PullPolicy),
		ClusterDomain: o.ClusterDomain, NodeSelector: o.WorkerNodeSel, RunAsRoot: o.WorkersAsRoot, Trusted: o.Trusted,
		TLS: o.WorkersTLS}
	return nil
}

// NewScheme returns the scheme of the objects the controller handles.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s) // static registrations: cannot fail
	_ = v1alpha1.AddToScheme(s)
	return s
}

// Run runs the controller until ctx is done.
func (o *Options) Run(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return fmt.Errorf("--kubeconfig: %w", err)
	}
	mgr, err := o.NewManager(cfg)
	if err != nil {
		return err
	}
	klog.InfoS("Starting the sluice controller", "heartbeat", o.HeartbeatAddr, "workerImage", o.WorkerImage)
	return mgr.Start(ctx)
}

// NewManager wires the controller: the Dataset reconciler, the heartbeat
// endpoint (scaler demand and reaper), metrics and probes.
func (o *Options) NewManager(cfg *rest.Config) (manager.Manager, error) {
	ctrl.SetLogger(klog.NewKlogr())
	// Only the pods the webhook converted are cached (the reaper's view).
	converted, _ := labels.NewRequirement(contract.InjectedLabel, selection.Exists, nil)
	mgr, err := manager.New(cfg, manager.Options{
		Scheme:                  NewScheme(),
		Metrics:                 metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress:  o.HealthAddr,
		LeaderElection:          o.LeaderElect,
		LeaderElectionID:        "sluice-controller.sluice.dev",
		LeaderElectionNamespace: o.LeaderNS,
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Label: labels.NewSelector().Add(*converted)},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if o.templateParsed.Image == "" {
		if o.templateParsed.Image, err = ownImage(cs); err != nil {
			return nil, err
		}
	}
	demand := &Demand{Window: o.DemandWindow}
	wake := make(chan event.GenericEvent, 256)
	rec := mgr.GetEventRecorder("sluice-controller")
	r := &DatasetReconciler{Client: mgr.GetClient(), Pods: mgr.GetAPIReader(), Recorder: rec, Template: o.templateParsed, Demand: demand,
		Resync: o.Resync, Wake: wake, Stats: ScrapeStats(&http.Client{})}
	var hbTLS, workersTLS *tls.Config
	if o.WorkersTLS {
		r.Authority = &Authority{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Namespace: o.Namespace,
			ClusterDomain: o.ClusterDomain, ServiceName: o.ServiceName}
		if o.OwnerRole != "" {
			if r.Authority.Owner, err = clusterRoleOwner(cs, o.OwnerRole); err != nil {
				return nil, err
			}
		}
		hbTLS = pki.StaticServerConfig(r.Authority.HeartbeatCertificate)
		workersTLS = r.Authority.ClientTLS()
		if err := mgr.Add(r.Authority); err != nil {
			return nil, err
		}
	}
	if o.Preload {
		open := o.preloadOpen
		if open == nil {
			open = WorkersSource(o.ClusterDomain, o.TokenFile, workersTLS)
		}
		r.Preloader = &Preloader{Open: open}
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, err
	}
	overdue := prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_sidecar_exit_overdue_total",
		Help: "FUSE sidecars still running 60 s after being told to exit."})
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_heartbeats_refused_total",
		Help: "Heartbeats refused (bad token, or a token of another pod)."})
	told := prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_sidecar_exits_total",
		Help: "FUSE sidecars told to exit because their pod's app containers are done."})
	for _, c := range []prometheus.Collector{overdue, refused, told, &DatasetCollector{Reader: mgr.GetClient()}} {
		if err := crmetrics.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	hb := &HeartbeatHandler{
		Auth: &kubeauth.TokenReviewer{Client: cs}, Pods: cachedPods{mgr.GetClient(), mgr.GetAPIReader()}, Demand: demand,
		Sidecar: contract.SidecarName, Refused: refused.Inc, Told: told.Inc,
		Notify: func(datasets []string) { wakeDatasets(wake, datasets) },
		Overdue: func(id Identity, since time.Duration) {
			overdue.Inc()
			pod := &corev1.Pod{}
			if err := mgr.GetClient().Get(context.Background(), client.ObjectKey{Namespace: id.Namespace, Name: id.PodName}, pod); err == nil {
				rec.Eventf(pod, nil, corev1.EventTypeWarning, "SidecarExitOverdue", "Reap",
					"the %s sidecar was told to exit %s ago and still runs", contract.SidecarName, since.Round(time.Second))
			}
		},
	}
	if err := mgr.Add(&httpRunnable{addr: o.HeartbeatAddr, handler: heartbeatMux(hb), tls: hbTLS}); err != nil {
		return nil, err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return nil, err
	}
	return mgr, nil
}

// clusterRoleOwner is an owner reference to the ClusterRole name.
func clusterRoleOwner(cs kubernetes.Interface, name string) (*metav1.OwnerReference, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	role, err := cs.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("--owner-cluster-role %q: %w", name, err)
	}
	return &metav1.OwnerReference{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole", Name: role.Name, UID: role.UID}, nil
}

// ownImage is the image of the controller's own container (the sluice
// image, which the workers run too).
func ownImage(cs kubernetes.Interface) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod, err := cs.CoreV1().Pods(os.Getenv("POD_NAMESPACE")).Get(ctx, os.Getenv("POD_NAME"), metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading the controller's pod for its image (or give --worker-image): %w", err)
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == "sluice" {
			return c.Image, nil
		}
	}
	return "", errors.New("the controller's pod has no container \"sluice\": give --worker-image")
}

func wakeDatasets(wake chan<- event.GenericEvent, datasets []string) {
	for _, d := range datasets {
		ns, name, ok := splitDataset(d)
		if !ok {
			continue
		}
		select {
		case wake <- event.GenericEvent{Object: &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}}:
		default: // the queue is full; the resync will see the demand
		}
	}
}

func heartbeatMux(hb http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(contract.HeartbeatPath, hb)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return mux
}

// cachedPods reads converted pods from the manager's cache; a pod the
// cache does not know yet (it was just created) is read from the API
// server before "not found" tells its sidecar to exit.
type cachedPods struct{ c, api client.Reader }

func (p cachedPods) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	key := client.ObjectKey{Namespace: namespace, Name: name}
	err := p.c.Get(ctx, key, pod)
	if apierrors.IsNotFound(err) {
		err = p.api.Get(ctx, key, pod)
	}
	return pod, err
}

// httpRunnable serves an HTTP endpoint while the manager runs, on the
// leader only (the demand it records drives that leader's scaler).
type httpRunnable struct {
	addr    string
	handler http.Handler
	tls     *tls.Config // nil: plain HTTP
}

func (h *httpRunnable) NeedLeaderElection() bool { return true }

func (h *httpRunnable) Start(ctx context.Context) error {
	srv := &http.Server{Addr: h.addr, Handler: h.handler, ReadHeaderTimeout: 10 * time.Second, TLSConfig: h.tls}
	errc := make(chan error, 1)
	go func() {
		if h.tls != nil {
			errc <- srv.ListenAndServeTLS("", "")
		} else {
			errc <- srv.ListenAndServe()
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("heartbeat endpoint %s: %w", h.addr, err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
}
