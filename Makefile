# sluice — build, test, demo, bench. Everything this needs is installed by
# the targets themselves (pinned `go install` into ./bin).
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/sluice-dev/sluice/internal/version.Version=$(VERSION)
VERSITYGW_VERSION := v1.8.0
RCLONE_VERSION := v1.76.0
CSI_SANITY_VERSION := v5.6.0
CONTROLLER_GEN_VERSION := v0.23.0
HELM_VERSION := v3.22.0
# Prometheus v3.16 (its Go module's version): promtool, and the PromQL
# parser of deploy/monitoring/exprnames.
PROMETHEUS_VERSION := v0.316.0
TEST_TIMEOUT ?= 30m
# Kubernetes components for tests and the e2e cluster, built from
# k8s.io/kubernetes in the separate module e2e/cluster; cached per version.
K8S_VERSION := v1.37.2
K8S_MINOR := 37
K8S_BIN := $(BIN)/k8s-$(K8S_VERSION)-$(shell $(GO) env GOVERSION)
K8S_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(p).gitVersion=$(K8S_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(K8S_MINOR))
OUT := $(CURDIR)/_output

export SLUICE_VERSITYGW := $(BIN)/versitygw
export SLUICE_BIN := $(BIN)/sluice
export SLUICE_BENCH_BIN := $(BIN)/sluice-bench
export SLUICE_KUBE_APISERVER := $(K8S_BIN)/kube-apiserver
export SLUICE_KUBECTL := $(K8S_BIN)/kubectl
export SLUICE_HELM := $(BIN)/helm
export SLUICE_PROMTOOL := $(BIN)/promtool
export SLUICE_EXPRNAMES := $(BIN)/exprnames

.PHONY: all build tools test lint generate demo bench bench-fusermount3 clean kube-binaries etcd \
	cluster-up cluster-down cluster-packages e2e-images e2e image deploy

all: build

# sluice (every component; what the image runs) and sluice-bench (the
# benchmarks and the demo, with their versitygw launcher and fault proxies).
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/sluice ./cmd/sluice
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/sluice-bench ./cmd/sluice-bench

# Pinned test tools; a stamp file per version so a version bump reinstalls.
tools: $(BIN)/.versitygw-$(VERSITYGW_VERSION) $(BIN)/.csi-sanity-$(CSI_SANITY_VERSION) $(BIN)/.helm-$(HELM_VERSION) \
	$(BIN)/.promtool-$(PROMETHEUS_VERSION) $(BIN)/exprnames

$(BIN)/.versitygw-$(VERSITYGW_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)
	touch $@

$(BIN)/.csi-sanity-$(CSI_SANITY_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$(CSI_SANITY_VERSION)
	touch $@

$(BIN)/.helm-$(HELM_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	touch $@

$(BIN)/.promtool-$(PROMETHEUS_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)
	touch $@

# The metric names of the dashboard's and alerts' expressions (a module of
# its own: the Prometheus server's dependencies stay out of sluice's).
$(BIN)/exprnames: deploy/monitoring/exprnames/main.go deploy/monitoring/exprnames/go.mod deploy/monitoring/exprnames/go.sum
	mkdir -p $(BIN)
	cd deploy/monitoring/exprnames && $(GO) build -o $(BIN)/exprnames .

$(BIN)/.rclone-$(RCLONE_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/rclone/rclone@$(RCLONE_VERSION)
	touch $@

$(BIN)/.controller-gen-$(CONTROLLER_GEN_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	touch $@

# The Dataset CRD and deepcopy functions from cachectl/api (committed; a
# test checks the CRD against a real API server).
generate: $(BIN)/.controller-gen-$(CONTROLLER_GEN_VERSION)
	$(BIN)/controller-gen object paths=./cachectl/api/... \
		crd:maxDescLen=400 paths=./cachectl/api/... output:crd:artifacts:config=deploy/controller

# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kubectl (about 12 minutes cold on 2 cores; then cached in $(K8S_BIN)).
kube-binaries: $(K8S_BIN)/.built

$(K8S_BIN)/.built: e2e/cluster/go.mod e2e/cluster/go.sum
	mkdir -p $(K8S_BIN)
	cd e2e/cluster && $(GO) build -trimpath -ldflags '$(K8S_LDFLAGS)' -o $(K8S_BIN)/ \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl
	touch $@

# etcd from Debian (etcd-server 3.4) for the tests that run a real API server.
etcd:
	@command -v etcd >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server; }

# Tests that need root and /dev/fuse run here; CI runs as root.
test: tools build kube-binaries etcd
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

demo: tools build
	$(BIN)/sluice-bench demo --versitygw $(BIN)/versitygw $(DEMO_FLAGS)

# rclone mount (bazil.org/fuse) mounts through fusermount3, even as root.
.PHONY: bench-fusermount3
bench-fusermount3:
	@command -v fusermount3 >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y fuse3; }

# s3fs (Debian s3fs-fuse) is the data-path benchmark's second peer.
.PHONY: bench-s3fs
bench-s3fs:
	@command -v s3fs >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y s3fs; }

bench: tools build $(BIN)/.rclone-$(RCLONE_VERSION) bench-fusermount3 bench-s3fs
	mkdir -p $(OUT)/bench
	$(BIN)/sluice-bench datapath --versitygw $(BIN)/versitygw --rclone $(BIN)/rclone --s3fs "$$(command -v s3fs)" \
		--json $(OUT)/bench/datapath.json $(BENCH_FLAGS)
	$(BIN)/sluice-bench burst --versitygw $(BIN)/versitygw --rclone $(BIN)/rclone --clients 16,64 \
		--json $(OUT)/bench/burst.json $(BURST_FLAGS)
	$(BIN)/sluice-bench burst --versitygw $(BIN)/versitygw --files 1 --file-size 2Gi --clients 8 \
		--modes sluice,sluice-copy --json $(OUT)/bench/modelload.json $(BURST_FLAGS)
	$(BIN)/sluice-bench burst --versitygw $(BIN)/versitygw --files 8 --file-size 32Mi --clients 8 --files-at-once 1 \
		--bandwidth 32M --modes sluice --json $(OUT)/bench/multifile-32M.json $(BURST_FLAGS)
	$(BIN)/sluice-bench burst --versitygw $(BIN)/versitygw --files 8 --file-size 32Mi --clients 8 --files-at-once 1 \
		--bandwidth 100M --modes sluice --json $(OUT)/bench/multifile-100M.json $(BURST_FLAGS)
	$(BIN)/sluice-bench burst --versitygw $(BIN)/versitygw --clients 16 --workers 3 \
		--modes sluice,scale-ahead,cold-start --json $(OUT)/bench/coldstart.json $(BURST_FLAGS)
	$(BIN)/sluice-bench faults --versitygw $(BIN)/versitygw --json $(OUT)/bench/faults.json $(FAULT_FLAGS)
	$(BIN)/sluice-bench smallfiles --versitygw $(BIN)/versitygw --rclone $(BIN)/rclone \
		--json $(OUT)/bench/smallfiles.json $(SMALL_FLAGS)

# Every fuzz target for a bounded time, one at a time (their seed corpora
# in testdata/fuzz run as plain tests in `make test`). A count such as
# FUZZTIME=20000x avoids Go 1.26's coordinator timing out under load.
FUZZTIME ?= 20s
FUZZ_TARGETS = internal/cacheserver:FuzzWorkerAPI internal/volattr:FuzzParse internal/source:FuzzParse \
	driver:FuzzNodeRequest cachectl:FuzzDatasetWorkers cachectl:FuzzHeartbeat webhook:FuzzHandler

.PHONY: fuzz
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; echo "==> $$pkg $$name"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) ./$$pkg; \
	done

# A real single-node cluster (see e2e/cluster/up.sh); state in _output/e2e.
cluster-up: kube-binaries etcd cluster-packages e2e-images
	K8S_BIN=$(K8S_BIN) e2e/cluster/up.sh

cluster-down:
	e2e/cluster/down.sh

# The sluice OCI image (an OCI tarball, imported into the cluster's
# containerd by cluster-up and deploy) and deploy/ applied to the cluster.
image: e2e-images

deploy: image tools
	K8S_BIN=$(K8S_BIN) e2e/cluster/deploy.sh

# End-to-end tests on that cluster (starts it when it is not up).
e2e: build tools cluster-up deploy
	$(GO) test -tags e2e -count=1 -timeout 20m -v ./e2e/

cluster-packages:
	@command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] && \
		command -v iptables >/dev/null && command -v conntrack >/dev/null && [ -x /bin/busybox ] && \
		command -v tcpdump >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y containerd runc \
			containernetworking-plugins iptables conntrack busybox-static tcpdump; }

# OCI tarballs of the pause, busybox and sluice images (static binaries).
e2e-images:
	mkdir -p $(OUT)/e2e/images $(OUT)/e2e/bin
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(OUT)/e2e/bin/sluice ./cmd/sluice
	cd e2e/cluster && CGO_ENABLED=0 $(GO) build -o $(OUT)/e2e/bin/pause ./cmd/pause && \
		$(GO) build -o $(OUT)/e2e/bin/dns ./cmd/dns && \
		$(GO) run ./cmd/images -out $(OUT)/e2e/images -pause $(OUT)/e2e/bin/pause \
			-sluice $(OUT)/e2e/bin/sluice -busybox /bin/busybox

clean:
	rm -rf $(BIN)/sluice $(BIN)/sluice-bench $(OUT)
