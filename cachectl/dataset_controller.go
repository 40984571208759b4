package cachectl

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
)

// DatasetReconciler makes each Dataset a StatefulSet of cache workers
// behind a headless Service, sizes it with the Scaler on the clients'
// throughput (Demand), and reports what it sees in the Dataset's status.
// Owned objects carry owner references, so deleting a Dataset removes them;
// the origin is never touched.
type DatasetReconciler struct {
	Client client.Client
	// Pods lists the workers' pods (the API server: the manager's cache
	// holds converted pods only).
	Pods     client.Reader
	Recorder recorder.EventRecorder
	Template WorkerTemplate
	Demand   *Demand
	// Resync is how often a Dataset's demand is looked at again (the
	// scaler's tick); default 10 s.
	Resync time.Duration
	// Wake carries datasets a heartbeat named, so a Dataset scaled to zero
	// gets a worker at once rather than at the next resync.
	Wake chan event.GenericEvent
	// Stats reads the workers' cache statistics (nil: not reported).
	Stats func(ctx context.Context, pods []corev1.Pod) (WorkerStats, error)
	Now   func() time.Time
	// Preloader warms the workers with spec.preload (nil: preload is off).
	Preloader *Preloader
	// Authority issues the workers' certificates and publishes the CA
	// bundle (nil: workers serve plain HTTP).
	Authority *Authority

	mu      sync.Mutex
	scalers map[types.NamespacedName]*Scaler
	loads   map[loadKey]context.CancelFunc // running preloads and warm-ups
	served  map[types.NamespacedName]servedSample
}

// SetupWithManager registers the reconciler.
func (r *DatasetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr).Named("dataset").
		For(&v1alpha1.Dataset{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&corev1.Service{})
	if r.Wake != nil {
		b = b.WatchesRawSource(source.Channel(r.Wake, &handler.EnqueueRequestForObject{}))
	}
	b, err := r.watchIncoming(mgr, b)
	if err != nil {
		return err
	}
	return b.Complete(r)
}

func (r *DatasetReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *DatasetReconciler) scaler(key types.NamespacedName) *Scaler {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.scalers == nil {
		r.scalers = map[types.NamespacedName]*Scaler{}
	}
	s := r.scalers[key]
	if s == nil {
		s = &Scaler{}
		r.scalers[key] = s
	}
	return s
}

// Reconcile implements reconcile.Reconciler.
func (r *DatasetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ds := &v1alpha1.Dataset{}
	if err := r.Client.Get(ctx, req.NamespacedName, ds); err != nil {
		if apierrors.IsNotFound(err) {
			r.cancelLoads(req.NamespacedName)
			if r.Authority != nil {
				r.Authority.Forget(req.NamespacedName)
			}
			r.mu.Lock()
			delete(r.scalers, req.NamespacedName)
			delete(r.served, req.NamespacedName)
			r.mu.Unlock()
			return ctrl.Result{}, r.dropIdentity(ctx, req.Namespace)
		}
		return ctrl.Result{}, err
	}
	if !ds.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	if err := r.ensureIdentity(ctx, ds.Namespace); err != nil {
		return ctrl.Result{}, err
	}
	if r.Authority != nil {
		if err := r.Authority.ForDataset(ctx, ds); err != nil {
			return ctrl.Result{}, err
		}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: WorkersName(ds.Name), Namespace: ds.Namespace}}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, svc, func() error {
		workerService(ds, svc)
		return controllerutil.SetControllerReference(ds, svc, r.Client.Scheme())
	}); err != nil {
		return ctrl.Result{}, fmt.Errorf("service %s: %w", svc.Name, err)
	}

	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: WorkersName(ds.Name), Namespace: ds.Namespace}}
	current := int32(-1)
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(sts), sts); err == nil && sts.Spec.Replicas != nil {
		current = *sts.Spec.Replicas
	} else if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	pods := r.workerPods(ctx, ds, current)
	ws, served := r.workerStats(ctx, ds, sts, pods)
	d, err := r.desired(ctx, ds, current, served)
	if err != nil {
		return ctrl.Result{}, err
	}
	desired, demand, clients := d.workers, d.demand, d.clients
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, sts, func() error {
		workerStatefulSet(ds, r.Template, desired, sts)
		return controllerutil.SetControllerReference(ds, sts, r.Client.Scheme())
	}); err != nil {
		return ctrl.Result{}, fmt.Errorf("statefulset %s: %w", sts.Name, err)
	}
	if current >= 0 && current != desired {
		r.Recorder.Eventf(ds, sts, corev1.EventTypeNormal, "Scaled", "Scale",
			"cache workers %d → %d (clients read %d B/s, %d pods; %d pods coming)", current, desired, int64(demand), clients, d.incoming)
		klog.InfoS("Scaled cache workers", "dataset", klog.KObj(ds), "from", current, "to", desired,
			"bytesPerSecond", int64(demand), "clients", clients, "coming", d.incoming)
	}
	if err := r.updateStatus(ctx, ds, observed{sts: sts, pods: pods, stats: ws, desired: desired, demand: demand,
		clients: clients, firstReads: r.Demand.FirstReadsOf(ds.Namespace+"/"+ds.Name, r.now())}); err != nil {
		return ctrl.Result{}, err
	}
	if r.Preloader != nil && preloadDue(ds, desired, r.loadRunning(req.NamespacedName, preloadKind), r.now()) {
		r.startPreload(ds, desired)
	}
	if r.Preloader != nil && warmDue(ds, d, r.loadRunning(req.NamespacedName, warmKind), r.now()) {
		r.startWarm(ds, desired, d.incoming)
	}
	resync := r.Resync
	if resync <= 0 {
		resync = 10 * time.Second
	}
	return ctrl.Result{RequeueAfter: resync}, nil
}

// desired decides the worker count. Builtin: the scaler on the clients'
// throughput, written to spec.replicas so /scale shows it. External:
// whatever spec.replicas says (an HPA or KEDA sets it).
func (r *DatasetReconciler) desired(ctx context.Context, ds *v1alpha1.Dataset, current int32, served float64) (decision, error) {
	cfg := Scaling(ds)
	demand, clients := r.Demand.Of(ds.Namespace+"/"+ds.Name, r.now())
	// Clients that do not heartbeat (CSI node mounts) show in what the
	// workers serve.
	demand = max(demand, served)
	if ds.Spec.Cache.Scaler == v1alpha1.ScalerExternal {
		if ds.Spec.Replicas != nil {
			return decision{*ds.Spec.Replicas, demand, clients, 0}, nil
		}
		return decision{cfg.MinWorkers, demand, clients, 0}, nil
	}
	if current < 0 { // first reconcile: no StatefulSet yet
		current = cfg.MinWorkers
		if ds.Spec.Replicas != nil {
			current = *ds.Spec.Replicas
		}
	}
	incoming, err := r.incoming(ctx, ds.Namespace+"/"+ds.Name)
	if err != nil {
		return decision{}, err
	}
	sc := r.scaler(client.ObjectKeyFromObject(ds))
	sc.observe(r.now(), demand, clients)
	ahead := float64(incoming) * sc.perClient(cfg)
	want := sc.Desired(cfg, r.now(), current, demand+ahead, clients+incoming)
	if incoming > 0 {
		klog.V(2).InfoS("Clients coming", "dataset", klog.KObj(ds), "pods", incoming, "bytesPerSecondAhead", int64(ahead),
			"workers", want)
	}
	if ds.Spec.Replicas == nil || *ds.Spec.Replicas != want {
		patch := client.MergeFrom(ds.DeepCopy())
		ds.Spec.Replicas = ptr.To(want)
		if err := r.Client.Patch(ctx, ds, patch); err != nil {
			return decision{}, fmt.Errorf("setting spec.replicas: %w", err)
		}
	}
	return decision{want, demand, clients, incoming}, nil
}

// decision is a worker count and what it was decided on.
type decision struct {
	workers  int32
	demand   float64 // bytes/s the clients read
	clients  int     // pods that report
	incoming int     // pods coming (incoming.go)
}

// ensureIdentity gives namespace ns the workers' service account and lets
// it review tokens (the workers admit pods by TokenReview).
func (r *DatasetReconciler) ensureIdentity(ctx context.Context, ns string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: WorkerServiceAccount, Namespace: ns,
		Labels: map[string]string{LabelManagedBy: managerName}}}
	if err := r.Client.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service account %s/%s: %w", ns, sa.Name, err)
	}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: WorkerRoleBindingName(ns)}}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, crb, func() error {
		workerRoleBinding(ns, crb)
		return nil
	}); err != nil {
		return fmt.Errorf("cluster role binding %s: %w", crb.Name, err)
	}
	return nil
}

// dropIdentity removes the workers' service account and cluster role
// binding of namespace ns once no Dataset is left there (the binding is
// cluster-scoped: no Dataset can own it).
func (r *DatasetReconciler) dropIdentity(ctx context.Context, ns string) error {
	list := &v1alpha1.DatasetList{}
	if err := r.Client.List(ctx, list, client.InNamespace(ns)); err != nil || len(list.Items) > 0 {
		return err
	}
	for _, obj := range []client.Object{
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: WorkerRoleBindingName(ns)}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: WorkerServiceAccount, Namespace: ns}},
	} {
		if err := r.Client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("removing %s: %w", obj.GetName(), err)
		}
	}
	return nil
}

// observed is what one reconcile saw of a Dataset's workers and decided.
type observed struct {
	sts     *appsv1.StatefulSet
	pods    []corev1.Pod
	stats   *WorkerStats // nil: not scraped
	desired int32
	demand  float64 // bytes/s the clients read
	clients int
	// firstReads are what the clients heard from read first (nil: none).
	firstReads []string
}

func (r *DatasetReconciler) updateStatus(ctx context.Context, ds *v1alpha1.Dataset, o observed) error {
	sts, desired, ws := o.sts, o.desired, o.stats
	before := ds.DeepCopy()
	st := &ds.Status
	st.ObservedGeneration = ds.Generation
	st.Replicas = sts.Status.Replicas
	st.ReadyWorkers = sts.Status.ReadyReplicas
	st.DesiredWorkers = desired
	st.Selector = labels.SelectorFromSet(selectorLabels(ds)).String()
	st.Workers = v1alpha1.ServiceAddress(ds.Namespace, ds.Name, r.Template.ClusterDomain)
	st.Clients = int32(o.clients)
	st.Throughput = int64(o.demand)
	if ws != nil {
		st.CachedBytes, st.HitRatio = ws.CachedBytes, ws.HitRatio
	}
	gen := ds.Generation
	switch {
	case desired == 0:
		st.Phase = v1alpha1.PhaseIdle
		setCondition(st, v1alpha1.ConditionReady, metav1.ConditionTrue, "ScaledToZero", "no clients; a first mount starts a worker", gen)
	case st.ReadyWorkers > 0:
		st.Phase = v1alpha1.PhaseReady
		setCondition(st, v1alpha1.ConditionReady, metav1.ConditionTrue, "WorkersReady",
			fmt.Sprintf("%d of %d cache workers serve", st.ReadyWorkers, desired), gen)
		// A worker is ready only once it has reached the origin.
		setCondition(st, v1alpha1.ConditionSourceReachable, metav1.ConditionTrue, "WorkerProbed", "a cache worker reached the origin", gen)
	default:
		st.Phase = v1alpha1.PhasePending
		setCondition(st, v1alpha1.ConditionReady, metav1.ConditionFalse, "WorkersStarting",
			fmt.Sprintf("0 of %d cache workers serve yet", desired), gen)
		// A worker that exits at start says why (it could not read the
		// origin: bad URL, credentials, endpoint) in its termination message.
		if msg := workerFailure(o.pods); msg != "" {
			setCondition(st, v1alpha1.ConditionSourceReachable, metav1.ConditionFalse, "WorkerFailing", msg, gen)
		}
	}
	if st.Replicas != desired || st.ReadyWorkers != desired {
		setCondition(st, v1alpha1.ConditionScaling, metav1.ConditionTrue, "Scaling",
			fmt.Sprintf("%d workers, %d ready, %d wanted", st.Replicas, st.ReadyWorkers, desired), gen)
	} else {
		setCondition(st, v1alpha1.ConditionScaling, metav1.ConditionFalse, "Stable", fmt.Sprintf("%d workers", desired), gen)
	}
	preloadCondition(st, r.loadRunning(client.ObjectKeyFromObject(ds), preloadKind), gen)
	if o.firstReads != nil {
		st.FirstReads = o.firstReads
	}
	if equalStatus(before.Status, ds.Status) {
		return nil
	}
	return r.Client.Status().Patch(ctx, ds, client.MergeFrom(before))
}

func setCondition(st *v1alpha1.DatasetStatus, typ string, status metav1.ConditionStatus, reason, msg string, gen int64) {
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason,
		Message: msg, ObservedGeneration: gen})
}

func equalStatus(a, b v1alpha1.DatasetStatus) bool { return equality.Semantic.DeepEqual(a, b) }

// splitDataset splits "namespace/name"; ok is false unless both are set.
func splitDataset(s string) (ns, name string, ok bool) {
	ns, name = contract.SplitDatasetRef(s)
	return ns, name, ns != "" && name != ""
}
