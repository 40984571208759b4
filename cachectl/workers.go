package cachectl

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
)

// Labels of the objects the controller makes for a Dataset.
const (
	LabelDataset   = "sluice.dev/dataset"
	LabelComponent = "app.kubernetes.io/component"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	componentName  = "cache-worker"
	managerName    = "sluice-controller"
	// WorkerServiceAccount is the service account of every Dataset's
	// workers in a namespace; it may create TokenReviews (to admit pods).
	WorkerServiceAccount = "sluice-cache-worker"
	metricsPort          = 9090
	// probeTimeout is the workers' probes' timeout, seconds.
	probeTimeout = 5
)

// Defaults of a Dataset's spec.cache.
const (
	defaultMemory = "512Mi"
	defaultDisk   = "10Gi"
	defaultTarget = 200 << 20 // bytes/s per worker
)

// WorkerTemplate is what the controller's flags say about every worker.
type WorkerTemplate struct {
	Image           string
	ImagePullPolicy corev1.PullPolicy
	ClusterDomain   string
	// NodeSelector places workers (e.g. on nodes with fast local disks).
	NodeSelector map[string]string
	// RunAsRoot runs workers as root (off: UID 65532).
	RunAsRoot bool
	// Trusted are service accounts (namespace/name) the workers admit from
	// any namespace: the CSI node plugin, which checks access per pod.
	Trusted []string
	// TLS serves the worker API over TLS with the certificate the
	// Authority issues (the Secret WorkersTLSSecret).
	TLS bool
}

// WorkersName is the name of a Dataset's StatefulSet and headless Service.
func WorkersName(ds string) string { return ds + contract.WorkersServiceSuffix }

func selectorLabels(ds *v1alpha1.Dataset) map[string]string {
	return map[string]string{LabelComponent: componentName, LabelDataset: ds.Name}
}

func objectLabels(ds *v1alpha1.Dataset) map[string]string {
	l := selectorLabels(ds)
	l[LabelManagedBy] = managerName
	l["app.kubernetes.io/name"] = "sluice"
	return l
}

// Scaling is a Dataset's spec.cache with the defaults applied.
func Scaling(ds *v1alpha1.Dataset) ScalerConfig {
	c := ds.Spec.Cache
	cfg := ScalerConfig{MinWorkers: 1, MaxWorkers: 8, TargetPerWorker: defaultTarget,
		ScaleDownDelay: 5 * time.Minute}
	if c.MinWorkers != nil {
		cfg.MinWorkers = *c.MinWorkers
	}
	if c.MaxWorkers != nil {
		cfg.MaxWorkers = *c.MaxWorkers
	} else {
		cfg.MaxWorkers = max(cfg.MaxWorkers, cfg.MinWorkers) // the default never undercuts minWorkers
	}
	if c.TargetThroughputPerWorker != nil && c.TargetThroughputPerWorker.Sign() > 0 {
		cfg.TargetPerWorker = c.TargetThroughputPerWorker.AsApproximateFloat64()
	}
	if c.ScaleDownDelay != nil {
		cfg.ScaleDownDelay = c.ScaleDownDelay.Duration
	}
	return cfg
}

// workerService fills the headless Service of ds's workers.
func workerService(ds *v1alpha1.Dataset, svc *corev1.Service) {
	svc.Labels = objectLabels(ds)
	svc.Spec.ClusterIP = corev1.ClusterIPNone
	svc.Spec.Selector = selectorLabels(ds)
	svc.Spec.PublishNotReadyAddresses = false
	svc.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: contract.WorkersPort,
		TargetPort: intstr.FromInt32(contract.WorkersPort), Protocol: corev1.ProtocolTCP}}
}

// workerStatefulSet fills the StatefulSet of ds's workers with replicas
// pods. The selector is set only on creation (it is immutable).
func workerStatefulSet(ds *v1alpha1.Dataset, t WorkerTemplate, replicas int32, sts *appsv1.StatefulSet) {
	sts.Labels = objectLabels(ds)
	if sts.CreationTimestamp.IsZero() {
		sts.Spec.Selector = &metav1.LabelSelector{MatchLabels: selectorLabels(ds)}
	}
	sts.Spec.ServiceName = WorkersName(ds.Name)
	sts.Spec.Replicas = ptr.To(replicas)
	sts.Spec.PodManagementPolicy = appsv1.ParallelPodManagement
	sts.Spec.Template = workerPod(ds, t)
}

func workerPod(ds *v1alpha1.Dataset, t WorkerTemplate) corev1.PodTemplateSpec {
	mem, disk := resource.MustParse(defaultMemory), resource.MustParse(defaultDisk)
	if ds.Spec.Cache.Memory != nil {
		mem = *ds.Spec.Cache.Memory
	}
	if ds.Spec.Cache.Disk != nil {
		disk = *ds.Spec.Cache.Disk
	}
	ttl := 60 * time.Second
	if ds.Spec.MetadataTTL != nil {
		ttl = ds.Spec.MetadataTTL.Duration
	}
	args := []string{"cache-worker",
		"--listen=:" + strconv.Itoa(contract.WorkersPort),
		"--metrics-addr=:" + strconv.Itoa(metricsPort),
		"--dataset=" + ds.Name,
		"--token-review",
		"--allow-namespaces=" + strings.Join(ds.AllowedNamespaces(), ","),
		"--cache-dir=/cache",
		"--cache-memory=" + mem.String(),
		"--cache-disk=" + disk.String(),
		"--metadata-ttl=" + ttl.String(),
	}
	if len(t.Trusted) > 0 {
		args = append(args, "--trust-service-accounts="+strings.Join(t.Trusted, ","))
	}
	scheme := corev1.URISchemeHTTP
	mounts := []corev1.VolumeMount{{Name: "cache", MountPath: "/cache"}}
	var tlsVolumes []corev1.Volume
	if t.TLS {
		scheme = corev1.URISchemeHTTPS
		args = append(args, "--tls-cert-file="+contract.WorkersTLSDir+"/"+corev1.TLSCertKey,
			"--tls-key-file="+contract.WorkersTLSDir+"/"+corev1.TLSPrivateKeyKey)
		mounts = append(mounts, corev1.VolumeMount{Name: "tls", MountPath: contract.WorkersTLSDir, ReadOnly: true})
		tlsVolumes = append(tlsVolumes, corev1.Volume{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: WorkersTLSSecret(ds.Name), DefaultMode: ptr.To[int32](0o440)}}})
	}
	if o := ds.Spec.Options; o.Endpoint != "" || o.Region != "" || o.PathStyle {
		if o.Endpoint != "" {
			args = append(args, "--s3-endpoint="+o.Endpoint)
		}
		if o.Region != "" {
			args = append(args, "--s3-region="+o.Region)
		}
		if o.PathStyle {
			args = append(args, "--s3-path-style")
		}
	}
	args, mounts, tlsVolumes = peerArgs(ds, t, args, mounts, tlsVolumes)
	args = append(args, ds.Spec.Source)
	env := []corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}}
	if ds.Spec.SecretRef != nil {
		for _, k := range []string{contract.EnvAccessKeyID, contract.EnvSecretAccessKey} {
			env = append(env, corev1.EnvVar{Name: k, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: *ds.Spec.SecretRef, Key: k}}})
		}
	}
	// The memory tier plus room for the Go runtime, buffers and metadata.
	limit := mem.DeepCopy()
	limit.Add(resource.MustParse("256Mi"))
	request := mem.DeepCopy()
	request.Add(resource.MustParse("64Mi"))
	sc := &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	podSC := &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	if !t.RunAsRoot {
		podSC.RunAsNonRoot, podSC.RunAsUser, podSC.FSGroup = ptr.To(true), ptr.To[int64](65532), ptr.To[int64](65532)
	}
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: objectLabels(ds)},
		Spec: corev1.PodSpec{
			ServiceAccountName:            WorkerServiceAccount,
			NodeSelector:                  t.NodeSelector,
			SecurityContext:               podSC,
			TerminationGracePeriodSeconds: ptr.To[int64](60), // > the workers' 15 s handover + 30 s drain
			Containers: []corev1.Container{{
				Name: "worker", Image: t.Image, ImagePullPolicy: t.ImagePullPolicy, Args: args, Env: env,
				// A worker that cannot reach the origin says why in its
				// last log lines; the Dataset's status shows them.
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: contract.WorkersPort},
					{Name: "metrics", ContainerPort: metricsPort}},
				// A worker serving a burst on a saturated node answers its
				// probes late (the default 1 s timed out in the e2e burst, and
				// the worker left its Service mid-burst); a worker that
				// cannot answer within 5 s is out. The first probe comes as
				// the container starts, often before the worker listens:
				// probed every second, a new worker is Ready within a second
				// of listening, and 4 failures in a row take it out.
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/readyz", Port: intstr.FromString("http"), Scheme: scheme}}, PeriodSeconds: 1, FailureThreshold: 4,
					TimeoutSeconds: probeTimeout},
				LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/healthz", Port: intstr.FromString("http"), Scheme: scheme}}, PeriodSeconds: 10, FailureThreshold: 6,
					TimeoutSeconds: probeTimeout},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: request},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: limit, corev1.ResourceEphemeralStorage: disk},
				},
				SecurityContext: sc,
				VolumeMounts:    mounts,
			}},
			Volumes: append([]corev1.Volume{{Name: "cache", VolumeSource: corev1.VolumeSource{
				EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr.To(disk)}}}}, tlsVolumes...),
		},
	}
}

// peerArgs lets each worker read the blocks it does not hold from its
// peers before the origin (cacheserver.PeerGetter): the workers' own
// Service, the pod's IP to leave out, and a token of the pod (audience
// contract.TokenAudience) that the peers admit like a client's.
func peerArgs(ds *v1alpha1.Dataset, t WorkerTemplate, args []string, mounts []corev1.VolumeMount,
	vols []corev1.Volume) ([]string, []corev1.VolumeMount, []corev1.Volume) {
	host := WorkersName(ds.Name) + "." + ds.Namespace + ".svc"
	if t.ClusterDomain != "" {
		host += "." + t.ClusterDomain
	}
	args = append(args, fmt.Sprintf("--peers-dns=%s:%d", host, contract.WorkersPort),
		"--peer-ip=$(POD_IP)", "--peer-token-file="+contract.TokenDir+"/"+contract.TokenFile)
	if t.TLS {
		args = append(args, "--peers-ca="+contract.WorkersTLSDir+"/"+contract.CABundleKey)
	} else {
		args = append(args, "--insecure-peers")
	}
	mounts = append(mounts, corev1.VolumeMount{Name: contract.TokenVolumeName, MountPath: contract.TokenDir, ReadOnly: true})
	vols = append(vols, corev1.Volume{Name: contract.TokenVolumeName, VolumeSource: corev1.VolumeSource{
		Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: contract.TokenAudience, ExpirationSeconds: ptr.To[int64](3600), Path: contract.TokenFile}}}}}})
	return args, mounts, vols
}

// workerRoleBinding lets the workers' service account of namespace ns
// review tokens (system:auth-delegator), cluster-wide by necessity.
func workerRoleBinding(ns string, crb *rbacv1.ClusterRoleBinding) {
	crb.Labels = map[string]string{LabelManagedBy: managerName}
	crb.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:auth-delegator"}
	crb.Subjects = []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: WorkerServiceAccount, Namespace: ns}}
}

// WorkerRoleBindingName names the ClusterRoleBinding of namespace ns.
func WorkerRoleBindingName(ns string) string { return "sluice-cache-worker:" + ns }
