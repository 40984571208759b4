package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
)

// Path is where the webhook serves pod mutations.
const Path = "/mutate--v1-pod"

// MaxPodBytes bounds the pod an AdmissionReview may carry; bigger pods are
// refused with a reason (the API server's own limit is larger).
const MaxPodBytes = 1 << 20

// Options are the options of `sluice webhook`.
type Options struct {
	Listen      string
	CertDir     string
	ConfigFile  string
	MetricsAddr string
	HealthAddr  string
	Config      *Config
}

// AddFlags registers the flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Listen, "listen", ":9443", "HTTPS address of the webhook")
	fs.StringVar(&o.CertDir, "cert-dir", "/etc/sluice/webhook-certs", "directory with tls.crt and tls.key (reloaded when they change)")
	fs.StringVar(&o.ConfigFile, "config", "", "configuration file (YAML; default: the built-in defaults)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":8080", "Prometheus metrics address (\"0\" disables)")
	fs.StringVar(&o.HealthAddr, "health-addr", ":8081", "address of /healthz and /readyz")
}

// Validate checks the flags and loads the configuration.
func (o *Options) Validate() error {
	if _, _, err := splitPort(o.Listen); err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	for _, f := range []string{"tls.crt", "tls.key"} {
		if _, err := os.Stat(filepath.Join(o.CertDir, f)); err != nil {
			return fmt.Errorf("--cert-dir %q: %w", o.CertDir, err)
		}
	}
	if o.ConfigFile == "" {
		o.Config = DefaultConfig()
		return o.Config.Validate()
	}
	c, err := LoadConfig(o.ConfigFile)
	if err != nil {
		return err
	}
	o.Config = c
	return nil
}

func splitPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q: want 1..65535", p)
	}
	return host, port, nil
}

// NewScheme returns the scheme of the objects the webhook reads.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s) // static registrations: cannot fail
	_ = v1alpha1.AddToScheme(s)
	return s
}

// NewWebhook returns the admission webhook: the typed defaulter behind a
// guard that refuses what is not a v1 Pod, or too big, with a reason.
func NewWebhook(scheme *runtime.Scheme, d *Defaulter) *admission.Webhook {
	typed := admission.WithDefaulter[*corev1.Pod](scheme, d)
	return &admission.Webhook{Handler: &guard{inner: typed.Handler}, RecoverPanic: ptr.To(true)}
}

// guard checks an admission request before the typed defaulter decodes it.
type guard struct{ inner admission.Handler }

func (g *guard) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Kind.Group != "" || req.Kind.Version != "v1" || req.Kind.Kind != "Pod" {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("sluice mutates v1 Pods only; got kind %q",
			req.Kind.String()))
	}
	if req.Operation != admissionv1.Create {
		return admission.Allowed("only pod creation is mutated")
	}
	if req.SubResource != "" {
		return admission.Allowed("subresource " + req.SubResource + " is not mutated")
	}
	if len(req.Object.Raw) > MaxPodBytes {
		return admission.Errored(http.StatusRequestEntityTooLarge, fmt.Errorf("pod of %d bytes: sluice accepts pods up to %d bytes",
			len(req.Object.Raw), MaxPodBytes))
	}
	if len(req.Object.Raw) == 0 {
		return admission.Errored(http.StatusBadRequest, errors.New("the request carries no pod (request.object is empty)"))
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(req.Object.Raw, &tm); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("request.object is not a JSON object: %w", err))
	}
	if (tm.APIVersion != "" && tm.APIVersion != "v1") || (tm.Kind != "" && tm.Kind != "Pod") {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("request.object is a %s %s, not a v1 Pod", tm.APIVersion, tm.Kind))
	}
	resp := g.inner.Handle(ctx, req)
	if !resp.Allowed && resp.Result != nil {
		klog.V(2).InfoS("Pod denied", "namespace", req.Namespace, "name", req.Name, "reason", resp.Result.Message)
	}
	return resp
}

// webhookServer is the HTTPS server: certificates from --cert-dir, which
// controller-runtime's certwatcher reloads when the files change.
func (o *Options) webhookServer() crwebhook.Server {
	host, port, _ := splitPort(o.Listen)
	return crwebhook.NewServer(crwebhook.Options{Host: host, Port: port, CertDir: o.CertDir, CertName: "tls.crt", KeyName: "tls.key"})
}

// Run serves the webhook until ctx is done.
func (o *Options) Run(ctx context.Context) error {
	ctrl.SetLogger(klog.NewKlogr())
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	scheme := NewScheme()
	mgr, err := manager.New(restCfg, manager.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress: o.HealthAddr,
		WebhookServer:          o.webhookServer(),
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	d := &Defaulter{Config: o.Config, Client: mgr.GetClient(), APIReader: mgr.GetAPIReader()}
	srv := mgr.GetWebhookServer()
	srv.Register(Path, NewWebhook(scheme, d))
	// Start the informers at once (not on the first request, which would
	// wait for the lists) and be ready only once they have synced.
	var started atomic.Bool
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		if warmInformers(ctx, mgr.GetCache()) {
			started.Store(true)
		}
		return nil
	})); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("webhook", srv.StartedChecker()); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("informers", func(r *http.Request) error {
		if !started.Load() {
			return errors.New("informers not started (is the API server reachable?)")
		}
		if !mgr.GetCache().WaitForCacheSync(r.Context()) {
			return errors.New("informers not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	klog.InfoS("Serving the sluice webhook", "listen", o.Listen, "path", Path, "certDir", o.CertDir,
		"profile", o.Config.Profile, "nativeSidecar", o.Config.NativeSidecar, "driver", contract.DriverName)
	return mgr.Start(ctx)
}

// warmInformers starts the informers the defaulter reads, retrying while
// the API server cannot be reached; until they have synced /readyz fails.
// It returns false when ctx ended first.
func warmInformers(ctx context.Context, c cache.Cache) bool {
	for _, obj := range []client.Object{&corev1.Node{}, &corev1.Namespace{}, &corev1.PersistentVolumeClaim{},
		&corev1.PersistentVolume{}, &storagev1.StorageClass{}} {
		for {
			_, err := c.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
			if err == nil {
				break
			}
			klog.ErrorS(err, "Cannot start an informer; retrying", "type", fmt.Sprintf("%T", obj))
			select {
			case <-ctx.Done():
				return false
			case <-time.After(2 * time.Second):
			}
		}
	}
	return true
}
