package cachectl

import (
	corev1 "k8s.io/api/core/v1"
)

// ShouldExit reports whether the FUSE sidecar of pod may unmount and exit
// now: every app container has terminated and the kubelet will not restart
// any of them (restartPolicy Never; OnFailure with every exit code 0). A
// native sidecar (an init container with restartPolicy Always) is ended by
// the kubelet itself, so the reaper leaves it alone: ShouldExit is false.
// sidecar is the sidecar container's name.
func ShouldExit(pod *corev1.Pod, sidecar string) bool {
	if pod == nil {
		return false
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == sidecar && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			return false
		}
	}
	if pod.Spec.RestartPolicy == corev1.RestartPolicyAlways || pod.Spec.RestartPolicy == "" {
		return false
	}
	status := map[string]corev1.ContainerStatus{}
	for _, s := range pod.Status.ContainerStatuses {
		status[s.Name] = s
	}
	apps := 0
	for _, c := range pod.Spec.Containers {
		if c.Name == sidecar {
			continue
		}
		apps++
		s, ok := status[c.Name]
		if !ok || s.State.Terminated == nil {
			return false
		}
		if pod.Spec.RestartPolicy == corev1.RestartPolicyOnFailure && s.State.Terminated.ExitCode != 0 {
			return false
		}
	}
	return apps > 0
}
