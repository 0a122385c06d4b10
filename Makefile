# Stargate — bare-metal server lifecycle from a Kubernetes management cluster.
# `make help` lists the targets.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

# Heavy artifacts (Kubernetes binaries, guest images) are cached outside the checkout, keyed by
# version, so fresh clones (CI) reuse them.
export STARGATE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/stargate
KUBE_VERSION ?= v1.37.2
ETCD_VERSION ?= v3.7.3
export KUBE_VERSION ETCD_VERSION
KUBE_BIN_DIR := $(shell STARGATE_CACHE='$(STARGATE_CACHE)' KUBE_VERSION='$(KUBE_VERSION)' ETCD_VERSION='$(ETCD_VERSION)' hack/kube-binaries.sh dir)

CONTROLLER_GEN := go tool controller-gen
# golangci-lint is pinned in a tool module of its own, so its dependencies stay out of go.mod.
GOLANGCI_LINT := go tool -modfile=hack/tools/lint/go.mod golangci-lint
# Real VM boots under TCG take minutes: give test binaries far more than go test's 10-minute default.
GO_TEST_FLAGS ?= -timeout 60m
# Root-only tests (bridges, taps, VMs) need the offline guest image; make builds it when root.
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: deps
deps: ## Install the Debian packages tests, e2e and demo need (as root; otherwise print the apt-get line and stop).
	@hack/deps.sh

.PHONY: generate
generate: ## Regenerate deepcopy code (api/v1alpha1/zz_generated.deepcopy.go).
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: ## Regenerate CRDs (config/crd/bases) and RBAC (config/rbac) from the Go markers.
	$(CONTROLLER_GEN) crd rbac:roleName=stargate-simulator paths=./... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

.PHONY: verify-generated
verify-generated: ## Fail when generated code or manifests are stale (regenerates them, so review and commit).
	@before=$$(cat api/v1alpha1/zz_generated.deepcopy.go config/crd/bases/*.yaml config/rbac/role.yaml 2>/dev/null | sha256sum); \
	$(MAKE) --no-print-directory generate manifests >/dev/null; \
	after=$$(cat api/v1alpha1/zz_generated.deepcopy.go config/crd/bases/*.yaml config/rbac/role.yaml | sha256sum); \
	if [[ "$$before" != "$$after" ]]; then \
		echo "generated code or manifests were stale; they are regenerated now: review 'git diff' and commit them" >&2; exit 1; fi

.PHONY: fmt
fmt: ## Format Go code.
	gofmt -s -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet and check formatting.
	@unformatted=$$(gofmt -s -l $$(git ls-files '*.go')); if [[ -n "$$unformatted" ]]; then echo "not gofmt'ed: $$unformatted" >&2; exit 1; fi
	go vet ./...

.PHONY: lint
lint: lint-go lint-shell ## Run golangci-lint (.golangci.yml) and shellcheck on every shell script.

.PHONY: lint-go
lint-go: ## Run golangci-lint (version pinned in hack/tools/lint/go.mod; first run builds it, ~2 min).
	$(GOLANGCI_LINT) run --allow-parallel-runners ./...

# Every shell script git knows of (tracked or new, not ignored): *.sh and files with a sh/bash shebang.
.PHONY: lint-shell
lint-shell: ## Run shellcheck (.shellcheckrc) on every shell script.
	@command -v shellcheck >/dev/null || { echo "shellcheck is missing: sudo apt-get install -y shellcheck (or run make deps as root)" >&2; exit 1; }
	@scripts=$$(git ls-files --cached --others --exclude-standard | while read -r f; do \
		if [[ -f "$$f" ]] && { [[ "$$f" == *.sh ]] || head -c 100 "$$f" | grep -qE '^#!.*\b(ba)?sh\b'; }; then echo "$$f"; fi; done | sort -u); \
	echo "shellcheck" $$scripts; shellcheck $$scripts

.PHONY: verify-tidy
verify-tidy: ## Fail when go.mod/go.sum are not tidy (shows the diff go mod tidy would make).
	@if ! diff=$$(go mod tidy -diff); then printf '%s\n' "$$diff" >&2; \
		echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit the result" >&2; exit 1; fi
	@if ! diff=$$(cd hack/tools/lint && go mod tidy -diff); then printf '%s\n' "$$diff" >&2; \
		echo "hack/tools/lint/go.mod/go.sum are not tidy: run 'cd hack/tools/lint && go mod tidy' and commit the result" >&2; exit 1; fi

##@ Build

.PHONY: build
build: ## Build the binaries into bin/.
	go build -o bin/ ./cmd/...

# The Redfish datacenter's container image (hack/image; docs/redfish-datacenter.md, "Running it as a
# Pod"). IMAGE names it; the labels say where it came from, and every timestamp is the commit's, so
# one commit and one installer ISO give one digest.
IMAGE ?= localhost/stargate-redfish-dc:dev
IMAGE_SOURCE ?= stargate.io/stargate

.PHONY: image
image: deps installer-iso ## Build the Redfish datacenter's container image without a container engine: bin/image/oci (OCI layout), bin/image/stargate-redfish-dc.tar (podman load, ctr images import); prints its digest.
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -buildid=" -o bin/image/simulator ./cmd/simulator
	rm -rf bin/image/oci bin/image/stargate-redfish-dc.tar
	go run ./hack/image --binary bin/image/simulator --installer-iso "$$(hack/installer-iso/build.sh)" \
		--layout bin/image/oci --tarball bin/image/stargate-redfish-dc.tar --tag '$(IMAGE)' --source '$(IMAGE_SOURCE)' \
		--version "$$(git describe --tags --always --dirty)" --revision "$$(git rev-parse HEAD)" --epoch "$$(git log -1 --format=%ct)"

##@ Demo

.PHONY: demo
demo: deps build ## Run the whole demo (root): a VM is repaved and joins a cluster (kind if Docker works, else the embedded local cluster).
	scripts/demo.sh run

.PHONY: demo-clean
demo-clean: build ## Remove everything the demo made: VMs, taps, bridge, NAT rules, cluster, files (root).
	scripts/demo.sh clean

##@ Test

.PHONY: envtest-assets
envtest-assets: ## Build etcd and kube-apiserver for envtest from the Go module proxy (cached; ~12 min cold).
	@hack/kube-binaries.sh envtest >/dev/null

.PHONY: kube-binaries
kube-binaries: ## Build all Kubernetes binaries (kubeadm, kubelet, ...) for the local cluster (cached).
	@hack/kube-binaries.sh all >/dev/null

.PHONY: guest-image
guest-image: ## Build the offline Debian 12 guest image for tests and the offline demo (root; cached by recipe; ~5 min cold).
	@hack/guest-image/build.sh >/dev/null

.PHONY: installer-iso
installer-iso: ## Build the installer ISO (Debian kernel + the static installer agent; cached by recipe and agent; ~30 s cold).
	@hack/installer-iso/build.sh >/dev/null

# What the tests need, one after another. (Tried side by side with -j3 on a fresh 2-core machine:
# the kube-apiserver build took 653 s instead of 328 s and debootstrap 378 s instead of ~100 s —
# both are CPU-bound there — so nothing was gained.)
.PHONY: test-prepare
test-prepare: go-checks $(if $(KUBEBUILDER_ASSETS),,envtest-assets) $(if $(IS_ROOT),guest-image) installer-iso

.PHONY: go-checks
go-checks: lint verify-tidy verify-generated vet ## Lint, tidiness, generated files and vet.

# KUBEBUILDER_ASSETS from the environment wins: users who already have envtest binaries keep them.
# As root, tests also run real VMs inside network namespaces they create (never the host's own).
# With CI=true or STARGATE_REQUIRE_VM_TESTS=1 a test that lacks what it needs fails instead of
# skipping (internal/testreq). hack/testsummary prints go test's usual output, then how many tests
# ran, passed, failed and skipped and why each skipped; under pipefail go test's status is kept.
.PHONY: test
test: deps test-prepare ## Run all tests (real kube-apiserver + etcd; as root also real QEMU VMs in test-made netns).
	@go build -o bin/testsummary ./hack/testsummary
	$(if $(IS_ROOT),STARGATE_GUEST_IMAGE="$${STARGATE_GUEST_IMAGE:-$$(hack/guest-image/build.sh)}") \
	STARGATE_INSTALLER_ISO="$${STARGATE_INSTALLER_ISO:-$$(hack/installer-iso/build.sh)}" \
	KUBEBUILDER_ASSETS="$(or $(KUBEBUILDER_ASSETS),$(KUBE_BIN_DIR))" go test -json $(GO_TEST_FLAGS) ./... | bin/testsummary

.PHONY: e2e
e2e: deps build kube-binaries guest-image installer-iso ## Offline end-to-end proof (root, ~10 min warm): a TCG VM joins the local cluster, is repaved again, deleted; a blank machine is installed through its BMC and joins.
	STARGATE_GUEST_IMAGE="$$(hack/guest-image/build.sh)" STARGATE_INSTALLER_ISO="$$(hack/installer-iso/build.sh)" KUBE_BIN_DIR="$(KUBE_BIN_DIR)" hack/e2e.sh

.PHONY: bench-join
bench-join: deps build kube-binaries guest-image installer-iso ## Join benchmark (root, ~12 min warm): the e2e, plus the worker profile without its golden image; prints "BENCH join".
	E2E_BENCH_JOIN=1 STARGATE_GUEST_IMAGE="$$(hack/guest-image/build.sh)" STARGATE_INSTALLER_ISO="$$(hack/installer-iso/build.sh)" KUBE_BIN_DIR="$(KUBE_BIN_DIR)" hack/e2e.sh

.PHONY: test-rehearsal
test-rehearsal: deps $(if $(KUBEBUILDER_ASSETS),,envtest-assets) guest-image ## Only the chaos rehearsal with real guests (root, ~5 min; make test runs it too): a disk error with probability 0.5 over six Servers, then recovery.
	STARGATE_GUEST_IMAGE="$${STARGATE_GUEST_IMAGE:-$$(hack/guest-image/build.sh)}" \
	KUBEBUILDER_ASSETS="$(or $(KUBEBUILDER_ASSETS),$(KUBE_BIN_DIR))" go test -count=1 -timeout 30m -run '^TestFaultScenarioWithQEMU$$' -v ./internal/simulator/

.PHONY: test-short
test-short: $(if $(KUBEBUILDER_ASSETS),,envtest-assets) ## Run the fast tests only (no VM boots, no scale test).
	KUBEBUILDER_ASSETS="$(or $(KUBEBUILDER_ASSETS),$(KUBE_BIN_DIR))" go test -short ./...

.PHONY: bench
bench: $(if $(KUBEBUILDER_ASSETS),,envtest-assets) $(if $(IS_ROOT),guest-image bench-join) installer-iso ## Run the benchmarks (as root including real VM boots, one each, and bench-join).
	$(if $(IS_ROOT),STARGATE_GUEST_IMAGE="$${STARGATE_GUEST_IMAGE:-$$(hack/guest-image/build.sh)}") \
	STARGATE_INSTALLER_ISO="$${STARGATE_INSTALLER_ISO:-$$(hack/installer-iso/build.sh)}" \
	KUBEBUILDER_ASSETS="$(or $(KUBEBUILDER_ASSETS),$(KUBE_BIN_DIR))" go test -timeout 60m -run '^$$' -bench . -benchmem ./...
