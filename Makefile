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
TEST_TIMEOUT ?= 30m
OUT := $(CURDIR)/_output

export SLUICE_VERSITYGW := $(BIN)/versitygw
export SLUICE_BIN := $(BIN)/sluice

.PHONY: all build tools test lint demo bench bench-fusermount3 clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/sluice ./cmd/sluice

# Pinned test tools; a stamp file per version so a version bump reinstalls.
tools: $(BIN)/.versitygw-$(VERSITYGW_VERSION) $(BIN)/.csi-sanity-$(CSI_SANITY_VERSION)

$(BIN)/.versitygw-$(VERSITYGW_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)
	touch $@

$(BIN)/.csi-sanity-$(CSI_SANITY_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$(CSI_SANITY_VERSION)
	touch $@

$(BIN)/.rclone-$(RCLONE_VERSION):
	mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install github.com/rclone/rclone@$(RCLONE_VERSION)
	touch $@

# Tests that need root and /dev/fuse run here; CI runs as root.
test: tools build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

demo: tools build
	$(BIN)/sluice demo --versitygw $(BIN)/versitygw $(DEMO_FLAGS)

# rclone mount (bazil.org/fuse) mounts through fusermount3, even as root.
.PHONY: bench-fusermount3
bench-fusermount3:
	@command -v fusermount3 >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y fuse3; }

bench: tools build $(BIN)/.rclone-$(RCLONE_VERSION) bench-fusermount3
	mkdir -p $(OUT)/bench
	$(BIN)/sluice bench datapath --versitygw $(BIN)/versitygw --rclone $(BIN)/rclone \
		--json $(OUT)/bench/datapath.json $(BENCH_FLAGS)
	$(BIN)/sluice bench burst --versitygw $(BIN)/versitygw --rclone $(BIN)/rclone --clients 16,64 \
		--json $(OUT)/bench/burst.json $(BURST_FLAGS)

clean:
	rm -rf $(BIN)/sluice $(OUT)
