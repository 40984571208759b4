package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
)

// Copy mode: each sluice volume becomes an emptyDir that an init container
// (sluice fetch, first of the pod's init containers) fills before anything
// else starts; the app containers mount it read-only. The copier runs with
// nothing a restricted namespace refuses: non-root, no capabilities, no
// privilege escalation, a read-only root file system, seccomp
// RuntimeDefault, no /dev/fuse. It reads a Dataset through its workers with
// the pod's projected token, as the sidecar does, and heartbeats so the
// workers scale for a burst of copying pods.

const (
	// copyMountPath is where a copier mounts the emptyDir it fills.
	copyMountPath = "/sluice/copy"
	// copierUID runs the copier (the distroless "nonroot" user).
	copierUID = 65532
	// podSecurityEnforceLabel is the Pod Security admission's label.
	podSecurityEnforceLabel = "pod-security.kubernetes.io/enforce"
)

// mode returns how the pod's volumes are served: the pod's annotation, else
// its namespace's label, else the configured default.
func (d *Defaulter) mode(ctx context.Context, pod *corev1.Pod, ns string) (string, error) {
	if v, ok := pod.Annotations[contract.ModeAnnotation]; ok {
		if v != contract.ModeFUSE && v != contract.ModeCopy {
			return "", deny("annotation %s=%q: want %q or %q", contract.ModeAnnotation, v, contract.ModeFUSE, contract.ModeCopy)
		}
		return v, nil
	}
	nsObj := &corev1.Namespace{}
	found, err := d.get(ctx, types.NamespacedName{Name: ns}, nsObj)
	if err != nil {
		return "", fmt.Errorf("reading namespace %s: %w", ns, err)
	}
	if v := nsObj.Labels[contract.ModeLabel]; found && (v == contract.ModeFUSE || v == contract.ModeCopy) {
		return v, nil
	}
	return d.Config.Mode, nil
}

// checkPodSecurity denies a FUSE conversion in a namespace whose Pod
// Security level refuses the sidecar (it needs /dev/fuse and privileges or
// SYS_ADMIN), naming copy mode, rather than letting Pod Security admission
// refuse the converted pod with a message about a container the user never
// wrote.
func (d *Defaulter) checkPodSecurity(ctx context.Context, pod *corev1.Pod, ns string) error {
	nsObj := &corev1.Namespace{}
	found, err := d.get(ctx, types.NamespacedName{Name: ns}, nsObj)
	if err != nil {
		return fmt.Errorf("reading namespace %s: %w", ns, err)
	}
	level := nsObj.Labels[podSecurityEnforceLabel]
	if !found || (level != "restricted" && level != "baseline") {
		return nil
	}
	return deny("namespace %q enforces the %q Pod Security Standard, which refuses the FUSE sidecar that would serve this "+
		"pod's sluice volumes (it needs /dev/fuse and privileges); add the annotation %s: %s to the pod to copy the data "+
		"into it before it starts instead (an unprivileged init container), or label the namespace %s=%s",
		ns, level, contract.ModeAnnotation, contract.ModeCopy, contract.ModeLabel, contract.ModeCopy)
}

// convertCopy converts the pod to copy mode.
func (d *Defaulter) convertCopy(pod *corev1.Pod, vols []sluiceVolume) error {
	limit, err := copySizeLimit(pod)
	if err != nil {
		return err
	}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if strings.HasPrefix(c.Name, contract.CopierPrefix) {
				return deny("container %q: names starting with %q are the sluice copiers'; rename it", c.Name, contract.CopierPrefix)
			}
		}
	}
	names := make([]string, len(vols))
	copiers := make([]corev1.Container, len(vols))
	needToken := false
	for i, v := range vols {
		if limit != nil && v.size > limit.Value() {
			return deny("volume %q: Dataset %s holds %s, more than the pod's %s=%s; raise the limit, or copy a part of it with "+
				"the volume's subPath", v.spec.Name, v.spec.Dataset, resource.NewQuantity(v.size, resource.BinarySI),
				contract.CopySizeLimitAnnotation, limit)
		}
		names[i] = v.spec.Name
		copiers[i] = d.buildCopier(v, i)
		needToken = needToken || v.spec.Dataset != ""
		pod.Spec.Volumes[v.index].VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			SizeLimit: emptyDirLimit(v.size, limit)}}
	}
	if needToken {
		tv := d.podVolumes()[0]
		if slices.ContainsFunc(pod.Spec.Volumes, func(o corev1.Volume) bool { return o.Name == tv.Name }) {
			return deny("the pod already has a volume named %q, which the sluice copier needs; rename it", tv.Name)
		}
		pod.Spec.Volumes = append(pod.Spec.Volumes, tv)
	}
	pod.Spec.InitContainers = append(copiers, pod.Spec.InitContainers...)
	setReadOnly(pod, names)
	markConverted(pod, contract.ModeCopy, vols)
	return nil
}

// copySizeLimit is the pod's limit on what copy mode writes (nil: none).
func copySizeLimit(pod *corev1.Pod) (*resource.Quantity, error) {
	raw, ok := pod.Annotations[contract.CopySizeLimitAnnotation]
	if !ok {
		return nil, nil
	}
	q, err := resource.ParseQuantity(raw)
	if err != nil || q.Sign() <= 0 {
		return nil, deny("annotation %s=%q: want a positive quantity such as 20Gi", contract.CopySizeLimitAnnotation, raw)
	}
	return &q, nil
}

// emptyDirLimit is a copied volume's sizeLimit: the dataset's size with
// room for the file system's own blocks when the Dataset knows it, capped
// by the pod's limit; the pod's limit alone otherwise.
func emptyDirLimit(size int64, limit *resource.Quantity) *resource.Quantity {
	if size <= 0 {
		return limit
	}
	want := size + size/20 + 16<<20
	if limit != nil && limit.Value() < want {
		return limit
	}
	return resource.NewQuantity(want, resource.BinarySI)
}

// setReadOnly makes every container's mount of the copied volumes
// read-only (the copiers' own mounts are left as built).
func setReadOnly(pod *corev1.Pod, names []string) {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if strings.HasPrefix(list[i].Name, contract.CopierPrefix) {
				continue
			}
			for j := range list[i].VolumeMounts {
				if m := &list[i].VolumeMounts[j]; slices.Contains(names, m.Name) {
					m.ReadOnly = true
				}
			}
		}
	}
}

// buildCopier returns the init container that fills volume v (the i-th).
func (d *Defaulter) buildCopier(v sluiceVolume, i int) corev1.Container {
	cfg := d.Config
	spec := v.spec
	spec.MountPath = copyMountPath
	env := podIdentityEnv()
	if v.secret != "" {
		prefix := fmt.Sprintf("%s%d_", contract.CredentialEnvPrefix, i)
		spec.CredentialsEnv = prefix
		env = append(env, credentialEnv(prefix, v.secret)...)
	}
	b, _ := json.Marshal(spec) // plain strings: cannot fail
	args := []string{contract.CopySubcommand, "--volume=" + string(b), "--parallel=" + strconv.Itoa(cfg.Copier.Parallel),
		"--cache-dir=", "--cache-memory=16Mi"}
	mounts := []corev1.VolumeMount{{Name: spec.Name, MountPath: copyMountPath}}
	if spec.Dataset != "" {
		args = append(args, "--worker-token-file="+contract.TokenDir+"/"+contract.TokenFile)
		mounts = append(mounts, corev1.VolumeMount{Name: contract.TokenVolumeName, MountPath: contract.TokenDir, ReadOnly: true})
		if cfg.ControllerURL != "" {
			args = append(args, "--controller-url="+cfg.ControllerURL)
		}
		args = append(args, d.workersTLSArgs()...)
	}
	name := contract.CopierPrefix + spec.Name
	if len(name) > 63 {
		name = contract.CopierPrefix + strconv.Itoa(i)
	}
	return corev1.Container{
		Name:            name,
		Image:           cfg.Sidecar.Image,
		ImagePullPolicy: cfg.Sidecar.ImagePullPolicy,
		Args:            args,
		Env:             env,
		Resources:       *cfg.Copier.Resources.DeepCopy(),
		VolumeMounts:    mounts,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To[int64](copierUID),
			RunAsGroup:               ptr.To[int64](copierUID),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Privileged:               ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		// The copier's last line names the file and the cause on failure.
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// revalidateCopy re-checks a pod converted to copy mode: its copiers run
// first and the copied volumes stay read-only for the others.
func (d *Defaulter) revalidateCopy(ctx context.Context, pod *corev1.Pod, ns string) error {
	var copiers, rest []corev1.Container
	for _, c := range pod.Spec.InitContainers {
		if strings.HasPrefix(c.Name, contract.CopierPrefix) {
			copiers = append(copiers, c)
		} else {
			rest = append(rest, c)
		}
	}
	if len(copiers) == 0 {
		return deny("the pod is marked %s=%s but has no %s* init container; remove the annotation to convert it again",
			contract.InjectedAnnotation, contract.ModeCopy, contract.CopierPrefix)
	}
	pod.Spec.InitContainers = append(copiers, rest...)
	var names []string
	for i := range copiers {
		vols, err := sidecarVolumes(&copiers[i])
		if err != nil {
			return deny("%v", err)
		}
		for _, v := range vols {
			names = append(names, v.Name)
		}
	}
	setReadOnly(pod, names)
	return d.noAddedVolumes(ctx, pod, ns)
}
