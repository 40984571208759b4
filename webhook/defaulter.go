// Package webhook is `sluice webhook`: a mutating admission webhook that
// rewrites pods bound for serverless nodes (which run no CSI node plugin)
// so that a FUSE sidecar in the pod serves their sluice volumes.
//
// The mutation is a typed controller-runtime defaulter over *corev1.Pod
// (Default); controller-runtime computes the JSON patch. For a pod that
// opts in (pod label sluice.dev/inject=true or namespace label
// sluice.dev/inject=enabled) or targets a serverless node (see detect.go),
// each volume of csi.sluice.dev — inline, or a PVC bound to a PV of the
// driver (volumes.go) — becomes an emptyDir, and one sidecar sluice-fuse
// (sidecar.go) mounts every such volume into its emptyDir. The sidecar is a
// native sidecar (first init container, restartPolicy Always, a startup
// probe that passes once every mount serves) where the kubelet supports it,
// else containers[0] with a postStart hook that waits for the mounts.
//
// In copy mode (pod annotation sluice.dev/mode: copy, which also opts the
// pod in; the namespace label of the same name; or the configured default)
// each such volume becomes an emptyDir that an unprivileged init container
// fills with `sluice fetch` before the pod's other containers start
// (copy.go). A FUSE conversion in a namespace whose Pod Security level is
// baseline or restricted is denied with a message naming copy mode.
//
// The annotation sluice.dev/injected marks a converted pod; a converted pod
// is only re-validated (sidecar first, restartPolicy Always, propagation of
// the app containers' mounts), so the webhook is idempotent and safe under
// reinvocationPolicy IfNeeded.
package webhook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sluice-dev/sluice/internal/contract"
)

// Values of the injected annotation: how the sidecar starts.
const (
	modeNative    = "native-sidecar"
	modePostStart = "post-start"
)

// Defaulter converts pods. Client reads through the manager's cache;
// APIReader (optional) is asked once when the cache misses.
type Defaulter struct {
	Config    *Config
	Client    client.Reader
	APIReader client.Reader
}

var _ admission.Defaulter[*corev1.Pod] = (*Defaulter)(nil)

// Default mutates pod in place. An *admissionError denies the pod with its
// message; any other error is the webhook's own failure.
func (d *Defaulter) Default(ctx context.Context, pod *corev1.Pod) error {
	ns := pod.Namespace
	if req, err := admission.RequestFromContext(ctx); err == nil && req.Namespace != "" {
		ns = req.Namespace
	}
	if pod.Labels[contract.InjectLabel] == "false" {
		return nil
	}
	if mode, ok := pod.Annotations[contract.InjectedAnnotation]; ok {
		return d.revalidate(ctx, pod, ns, mode)
	}
	if !slices.ContainsFunc(pod.Spec.Volumes, maybeSluice) {
		return nil // no lookups for pods that cannot have a sluice volume
	}
	trig, err := d.trigger(ctx, pod, ns)
	if err != nil || trig == "" {
		return err
	}
	vols, err := d.sluiceVolumes(ctx, pod, ns)
	if err != nil || len(vols) == 0 {
		return err
	}
	mode, err := d.mode(ctx, pod, ns)
	if err != nil {
		return err
	}
	if mode == contract.ModeCopy {
		if err := d.convertCopy(pod, vols); err != nil {
			return err
		}
		klog.V(2).InfoS("Pod converted", "namespace", ns, "pod", podName(pod), "trigger", trig, "mode", contract.ModeCopy)
		return nil
	}
	if err := d.checkPodSecurity(ctx, pod, ns); err != nil {
		return err
	}
	if sidecarIndex(pod.Spec.InitContainers) >= 0 || sidecarIndex(pod.Spec.Containers) >= 0 {
		return deny("the pod already has a container named %q but no %s annotation; rename the container", contract.SidecarName,
			contract.InjectedAnnotation)
	}
	native, err := d.native(ctx, pod)
	if err != nil {
		return err
	}
	names := make([]string, len(vols))
	for i, v := range vols {
		names[i] = v.spec.Name
	}
	if !native {
		for _, c := range pod.Spec.InitContainers {
			for _, m := range c.VolumeMounts {
				if slices.Contains(names, m.Name) {
					return deny("init container %q mounts sluice volume %q, which the sidecar can serve to init containers only as a "+
						"native sidecar (kubelet ≥ 1.29); set nativeSidecar: always in the webhook's configuration if the node supports it, "+
						"or read the data in an app container", c.Name, m.Name)
				}
			}
		}
	}
	for _, v := range vols {
		pod.Spec.Volumes[v.index].VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	}
	for _, v := range d.podVolumes() {
		if slices.ContainsFunc(pod.Spec.Volumes, func(o corev1.Volume) bool { return o.Name == v.Name }) {
			return deny("the pod already has a volume named %q, which the sluice sidecar needs; rename it", v.Name)
		}
		pod.Spec.Volumes = append(pod.Spec.Volumes, v)
	}
	size, err := d.sizeSidecar(pod, len(vols))
	if err != nil {
		return err
	}
	sidecar := d.buildSidecar(sidecarSpec{volumes: vols, native: native, profile: d.Config.Profile, size: size})
	if native {
		pod.Spec.InitContainers = append([]corev1.Container{sidecar}, pod.Spec.InitContainers...)
	} else {
		pod.Spec.Containers = append([]corev1.Container{sidecar}, pod.Spec.Containers...)
	}
	setPropagation(pod, names)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	if p, ok := d.Config.PlatformProfiles[d.Config.Profile]; ok {
		for k, v := range p.Annotations {
			pod.Annotations[k] = v
		}
	}
	mode = modePostStart
	if native {
		mode = modeNative
	}
	markConverted(pod, mode, vols)
	klog.V(2).InfoS("Pod converted", "namespace", ns, "pod", podName(pod), "trigger", trig, "mode", mode,
		"volumes", names, "profile", d.Config.Profile)
	return nil
}

// markConverted records how the pod was converted, as an annotation and
// as a label (so the controller's reaper can watch just the converted
// pods), and which Datasets it reads (for the controller's scaler).
func markConverted(pod *corev1.Pod, mode string, vols []sluiceVolume) {
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[contract.InjectedAnnotation] = mode
	var datasets []string
	for _, v := range vols {
		if v.spec.Dataset != "" && !slices.Contains(datasets, v.spec.Dataset) {
			datasets = append(datasets, v.spec.Dataset)
		}
	}
	if len(datasets) > 0 {
		pod.Annotations[contract.DatasetsAnnotation] = strings.Join(datasets, ",")
	}
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[contract.InjectedLabel] = mode
}

// revalidate re-checks a converted pod (another webhook may have changed
// it since): the sidecar first, restartPolicy Always for a native sidecar,
// HostToContainer on every container that mounts a converted volume.
func (d *Defaulter) revalidate(ctx context.Context, pod *corev1.Pod, ns, mode string) error {
	list := &pod.Spec.Containers
	switch mode {
	case modeNative:
		list = &pod.Spec.InitContainers
	case contract.ModeCopy:
		return d.revalidateCopy(ctx, pod, ns)
	case modePostStart:
	default:
		return deny("annotation %s=%q: want %q, %q or %q (remove the annotation to convert the pod)", contract.InjectedAnnotation,
			mode, modeNative, modePostStart, contract.ModeCopy)
	}
	i := sidecarIndex(*list)
	if i < 0 {
		return deny("the pod is marked %s=%s but has no %q container; remove the annotation to convert it again",
			contract.InjectedAnnotation, mode, contract.SidecarName)
	}
	sidecar := (*list)[i]
	*list = append((*list)[:i:i], (*list)[i+1:]...)
	if mode == modeNative {
		sidecar.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	}
	*list = append([]corev1.Container{sidecar}, *list...)
	vols, err := sidecarVolumes(&sidecar)
	if err != nil {
		return deny("%v", err)
	}
	names := make([]string, len(vols))
	for i, v := range vols {
		names[i] = v.Name
	}
	setPropagation(pod, names)
	return d.noAddedVolumes(ctx, pod, ns)
}

// noAddedVolumes denies a converted pod that has a sluice volume again: one
// added after the conversion would never be served.
func (d *Defaulter) noAddedVolumes(ctx context.Context, pod *corev1.Pod, ns string) error {
	added, err := d.sluiceVolumes(ctx, pod, ns)
	if err != nil {
		return err
	}
	if len(added) > 0 {
		return deny("volume %q of %s was added after the pod was converted (%s); it would never be served",
			added[0].spec.Name, contract.DriverName, contract.InjectedAnnotation)
	}
	return nil
}

// setPropagation gives every app and init container that mounts one of the
// converted volumes HostToContainer propagation (the sidecar's own mounts
// are left as built).
func setPropagation(pod *corev1.Pod, names []string) {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == contract.SidecarName {
				continue
			}
			for j := range list[i].VolumeMounts {
				if m := &list[i].VolumeMounts[j]; slices.Contains(names, m.Name) {
					m.MountPropagation = ptr.To(corev1.MountPropagationHostToContainer)
				}
			}
		}
	}
}

// native decides the start order: a native sidecar when the node's kubelet
// is ≥ 1.29 (the node's reported version when the pod names its node, the
// configured assumption otherwise).
func (d *Defaulter) native(ctx context.Context, pod *corev1.Pod) (bool, error) {
	// The pod may choose (e.g. a platform whose native sidecars misbehave).
	switch v, ok := pod.Annotations[contract.NativeSidecarAnnotation]; {
	case ok && v == "true":
		return true, nil
	case ok && v == "false":
		return false, nil
	case ok:
		return false, deny("annotation %s=%q: want \"true\" or \"false\"", contract.NativeSidecarAnnotation, v)
	}
	switch d.Config.NativeSidecar {
	case NativeAlways:
		return true, nil
	case NativeNever:
		return false, nil
	}
	v := d.Config.AssumeKubeletVersion
	if pod.Spec.NodeName != "" {
		node := &corev1.Node{}
		found, err := d.get(ctx, types.NamespacedName{Name: pod.Spec.NodeName}, node)
		if err != nil {
			return false, fmt.Errorf("reading node %s: %w", pod.Spec.NodeName, err)
		}
		if found && node.Status.NodeInfo.KubeletVersion != "" {
			v = node.Status.NodeInfo.KubeletVersion
		}
	}
	// Virtual kubelets report versions like "v1.30.2-vk-aliyun".
	got, err := version.ParseGeneric(strings.TrimPrefix(v, "v"))
	if err != nil {
		klog.V(2).InfoS("Unparsable kubelet version; assuming no native sidecars", "version", v, "err", err)
		return false, nil
	}
	return got.AtLeast(version.MustParseGeneric(minNativeKubelet)), nil
}

// maybeSluice reports whether a volume may be backed by csi.sluice.dev.
func maybeSluice(v corev1.Volume) bool {
	return (v.CSI != nil && v.CSI.Driver == contract.DriverName) || v.PersistentVolumeClaim != nil
}

func sidecarIndex(list []corev1.Container) int {
	return slices.IndexFunc(list, func(c corev1.Container) bool { return c.Name == contract.SidecarName })
}

func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName + "*"
}

// isDenial reports whether err denies the pod (rather than failing).
func isDenial(err error) bool {
	var ae *admissionError
	return errors.As(err, &ae)
}
