package cachectl

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestShouldExit(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	term := func(code int32) corev1.ContainerState {
		return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}
	}
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	pod := func(policy corev1.RestartPolicy, states ...corev1.ContainerState) *corev1.Pod {
		p := &corev1.Pod{Spec: corev1.PodSpec{RestartPolicy: policy,
			Containers: []corev1.Container{{Name: "sluice-fuse"}}}}
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: "sluice-fuse", State: running})
		for i, s := range states {
			name := string(rune('a' + i))
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: name})
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: name, State: s})
		}
		return p
	}
	native := pod(corev1.RestartPolicyNever, term(0))
	native.Spec.Containers = native.Spec.Containers[1:]
	native.Spec.InitContainers = []corev1.Container{{Name: "sluice-fuse", RestartPolicy: &always}}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{"app running", pod(corev1.RestartPolicyNever, running), false},
		{"app exited 0, Never", pod(corev1.RestartPolicyNever, term(0)), true},
		{"app failed, Never", pod(corev1.RestartPolicyNever, term(1)), true},
		{"app exited 0, OnFailure", pod(corev1.RestartPolicyOnFailure, term(0)), true},
		{"app failed, OnFailure (will restart)", pod(corev1.RestartPolicyOnFailure, term(2)), false},
		{"Always restarts everything", pod(corev1.RestartPolicyAlways, term(0)), false},
		{"one of two apps still running", pod(corev1.RestartPolicyNever, term(0), running), false},
		{"both apps done", pod(corev1.RestartPolicyNever, term(0), term(3)), true},
		{"no status yet", &corev1.Pod{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "sluice-fuse"}, {Name: "app"}}}}, false},
		{"native sidecar: the kubelet ends it", native, false},
		{"only the sidecar", pod(corev1.RestartPolicyNever), false},
		{"nil pod", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ShouldExit(tc.pod, "sluice-fuse"); got != tc.want {
				t.Fatalf("ShouldExit = %v, want %v", got, tc.want)
			}
		})
	}
}
