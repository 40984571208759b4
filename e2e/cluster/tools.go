//go:build tools

// Package cluster pins the Kubernetes components the e2e cluster runs. They
// are built from k8s.io/kubernetes in this separate module so that the main
// module never imports it.
package cluster

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
