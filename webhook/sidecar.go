package webhook

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sluice-dev/sluice/internal/contract"
)

const (
	// cacheVolumeName is the sidecar's disk tier (an emptyDir), when
	// configured.
	cacheVolumeName = "sluice-cache"
	cacheMountPath  = "/sluice/cache"
	tokenExpiry     = 3600
)

// sidecarSpec is what the sidecar container is built from.
type sidecarSpec struct {
	volumes []sluiceVolume
	native  bool
	profile string
	size    sidecarSizing
}

// buildSidecar returns the sidecar container.
func (d *Defaulter) buildSidecar(s sidecarSpec) corev1.Container {
	cfg := d.Config
	args := []string{contract.SidecarSubcommand,
		"--listen=:" + strconv.Itoa(contract.SidecarPort),
		"--worker-token-file=" + contract.TokenDir + "/" + contract.TokenFile,
		"--cache-memory=" + s.size.cacheMemory,
	}
	if cfg.diskCache() {
		// The volumes share the emptyDir: each one's disk tier gets its share
		// of the sizeLimit, so that together they stay within it.
		q := resource.MustParse(cfg.Sidecar.CacheDisk) // validated with the configuration
		per := max(q.Value()/int64(max(len(s.volumes), 1)), 1<<20)
		args = append(args, "--cache-dir="+cacheMountPath, "--cache-disk="+strconv.FormatInt(per, 10))
	} else {
		args = append(args, "--cache-dir=")
	}
	if cfg.ControllerURL != "" {
		args = append(args, "--controller-url="+cfg.ControllerURL)
	}
	args = append(args, d.workersTLSArgs()...)
	env := append(podIdentityEnv(), corev1.EnvVar{Name: contract.EnvMemoryLimit, ValueFrom: &corev1.EnvVarSource{
		ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: contract.SidecarName, Resource: "limits.memory",
			Divisor: resource.MustParse("1")}}})
	propagation := corev1.MountPropagationBidirectional
	if s.profile != ProfilePrivileged {
		propagation = corev1.MountPropagationNone // the platform propagates mounts
	}
	mounts := []corev1.VolumeMount{{Name: contract.TokenVolumeName, MountPath: contract.TokenDir, ReadOnly: true}}
	if cfg.diskCache() {
		mounts = append(mounts, corev1.VolumeMount{Name: cacheVolumeName, MountPath: cacheMountPath})
	}
	for i, v := range s.volumes {
		spec := v.spec
		if v.secret != "" {
			prefix := fmt.Sprintf("%s%d_", contract.CredentialEnvPrefix, i)
			spec.CredentialsEnv = prefix
			env = append(env, credentialEnv(prefix, v.secret)...)
		}
		b, _ := json.Marshal(spec) // plain strings: cannot fail
		args = append(args, "--volume="+string(b))
		mounts = append(mounts, corev1.VolumeMount{Name: spec.Name, MountPath: spec.MountPath, MountPropagation: ptr.To(propagation)})
	}
	args = append(args, cfg.Sidecar.ExtraArgs...)
	c := corev1.Container{
		Name:            contract.SidecarName,
		Image:           cfg.Sidecar.Image,
		ImagePullPolicy: cfg.Sidecar.ImagePullPolicy,
		Args:            args,
		Env:             env,
		Ports:           []corev1.ContainerPort{{Name: "sluice-fuse", ContainerPort: contract.SidecarPort, Protocol: corev1.ProtocolTCP}},
		Resources:       s.size.resources,
		VolumeMounts:    mounts,
		SecurityContext: d.securityContext(s.profile),
		// The sidecar's own message on failure (e.g. "mount data: …").
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if p, ok := cfg.PlatformProfiles[s.profile]; ok && *p.FuseDevice {
		if c.Resources.Limits == nil {
			c.Resources.Limits = corev1.ResourceList{}
		}
		if c.Resources.Requests == nil {
			c.Resources.Requests = corev1.ResourceList{}
		}
		c.Resources.Limits[contract.FuseResource] = resource.MustParse("1")
		c.Resources.Requests[contract.FuseResource] = resource.MustParse("1")
	}
	if s.native {
		c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
		c.StartupProbe = &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/readyz", Port: intstr.FromInt32(contract.SidecarPort)}},
			PeriodSeconds:    1,
			TimeoutSeconds:   1,
			FailureThreshold: cfg.StartupTimeoutSeconds,
		}
	} else {
		c.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{
			cfg.Sidecar.Binary, contract.SidecarSubcommand, "--check",
			"--listen=:" + strconv.Itoa(contract.SidecarPort),
			"--wait=" + strconv.Itoa(int(cfg.StartupTimeoutSeconds)) + "s",
		}}}}
	}
	return c
}

// podIdentityEnv tells a sluice container its pod (for heartbeats).
func podIdentityEnv() []corev1.EnvVar {
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	return []corev1.EnvVar{field(contract.EnvPodName, "metadata.name"), field(contract.EnvPodNamespace, "metadata.namespace"),
		field(contract.EnvPodUID, "metadata.uid")}
}

// credentialEnv passes a source volume's origin credentials from Secret
// secret as the two variables starting with prefix.
func credentialEnv(prefix, secret string) []corev1.EnvVar {
	var env []corev1.EnvVar
	for _, key := range []string{contract.EnvAccessKeyID, contract.EnvSecretAccessKey} {
		env = append(env, corev1.EnvVar{Name: prefix + key, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key}}})
	}
	return env
}

// securityContext is the sidecar's own: privileged in the default
// profile; otherwise every capability dropped but those of the profile.
// It runs as root whatever the pod asks for its app containers (mounting
// needs it); nothing of the app containers' contexts is touched.
func (d *Defaulter) securityContext(profile string) *corev1.SecurityContext {
	sc := &corev1.SecurityContext{RunAsUser: ptr.To[int64](0), RunAsNonRoot: ptr.To(false)}
	p, ok := d.Config.PlatformProfiles[profile]
	if !ok {
		sc.Privileged = ptr.To(true)
		return sc
	}
	sc.Privileged = ptr.To(false)
	sc.Capabilities = &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: append([]corev1.Capability(nil), p.Capabilities...)}
	return sc
}

// workersTLSArgs are the flags that make a sidecar or copier verify the
// workers and the controller with the bundle beside its token.
func (d *Defaulter) workersTLSArgs() []string {
	if d.Config.InsecureWorkers {
		return []string{"--insecure-workers"}
	}
	return []string{"--workers-ca=" + contract.TokenDir + "/" + contract.CABundleKey}
}

// podVolumes returns the volumes the sidecar adds: the projected token
// (with the CA bundle beside it, unless insecureWorkers) and, when
// configured, the disk tier.
func (d *Defaulter) podVolumes() []corev1.Volume {
	sources := []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
		Audience: contract.TokenAudience, ExpirationSeconds: ptr.To[int64](tokenExpiry), Path: contract.TokenFile}}}
	if !d.Config.InsecureWorkers {
		// Not optional: the pod waits for the controller to publish it.
		sources = append(sources, corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: contract.CABundleConfigMap},
			Items:                []corev1.KeyToPath{{Key: contract.CABundleKey, Path: contract.CABundleKey}}}})
	}
	vols := []corev1.Volume{{Name: contract.TokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: sources}}}}
	if d.Config.diskCache() {
		q := resource.MustParse(d.Config.Sidecar.CacheDisk)
		vols = append(vols, corev1.Volume{Name: cacheVolumeName, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &q}}})
	}
	return vols
}

// sidecarVolumes parses the --volume arguments of an injected sidecar.
func sidecarVolumes(c *corev1.Container) ([]contract.SidecarVolume, error) {
	var out []contract.SidecarVolume
	for _, a := range c.Args {
		raw, ok := strings.CutPrefix(a, "--volume=")
		if !ok {
			continue
		}
		var v contract.SidecarVolume
		if err := json.Unmarshal([]byte(raw), &v); err != nil {
			return nil, fmt.Errorf("sidecar argument %q: %w", a, err)
		}
		out = append(out, v)
	}
	return out, nil
}
