# corral's developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: ## Create .venv and install corral, its dev tools, helm and kubectl
	@bash scripts/setup.sh

.PHONY: up
up: install control-plane node-deps ## Start corral on a local cluster (control plane, a real node, the chart with images built here); gateway on 127.0.0.1:11434, sample model Ready
	$(PY) -m devstack up --dir .stack

.PHONY: down
down: ## Stop everything `make up` started and remove what it made on this machine (logs stay in .stack/logs)
	@if [ -x $(PY) ]; then $(PY) -m devstack down --dir .stack; \
	else python3 -m devstack down --dir .stack; fi

.PHONY: node-deps
node-deps: ## Install what the local node runs (containerd, runc, CNI plugins, iptables, buildah) from Debian
	@bash scripts/node-deps.sh

.PHONY: run
run: install ## Serve the bundled test model on 127.0.0.1:11434 without Kubernetes (corral serve)
	$(VENV)/bin/corral serve

.PHONY: images
images: install ## Build the runtime and operator images with buildah (cached by content) as OCI archives
	@bash scripts/build-images.sh $(IMAGES_ARGS)

.PHONY: control-plane
control-plane: ## Build (once, cached) the Kubernetes binaries: control plane, kubelet, kube-proxy, pause, fake GPU plugin
	@bash scripts/build-control-plane.sh

.PHONY: test
test: install control-plane node-deps images ## Run every test tier this machine can run
	$(PY) -m pytest -m "not e2e_kind" $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install ## Run only the unit tier (seconds)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

.PHONY: e2e-kind
e2e-kind: install ## Run the e2e_kind tier on a throwaway kind cluster (needs Docker, kind, network)
	@bash scripts/e2e-kind.sh $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff check, format check, and the import contracts between layers (.importlinter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports .importlinter --no-cache

.PHONY: typecheck
typecheck: install ## mypy (strict) over both packages
	$(VENV)/bin/mypy

.PHONY: cluster
cluster: install control-plane ## Start the control plane in the background; kubeconfig in .cluster/kubeconfig
	$(PY) -m devstack.controlplane up --dir .cluster

.PHONY: cluster-down
cluster-down: ## Stop the control plane and remove its state
	@if [ -x $(PY) ]; then $(PY) -m devstack.controlplane down --dir .cluster; \
	else python3 -m devstack.controlplane down --dir .cluster; fi

.PHONY: generate
generate: install ## Regenerate the chart's CRDs from crds/ and manifests/install.yaml from the chart
	$(PY) scripts/sync-crds.py
	bash scripts/render-manifests.sh

.PHONY: check-generated
check-generated: install ## Fail when the chart's CRDs or manifests/install.yaml are stale
	$(PY) scripts/sync-crds.py --check
	bash scripts/render-manifests.sh --check

.PHONY: bench
bench: install control-plane node-deps images ## Run the benchmarks under bench/ (each prints ratios against a reference)
	@bash bench/setup_references.sh
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
