# One entry point for set-up, the main job and the tests. Every target creates .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
MODEL  ?= lenet5
BUDGET ?= default
OUT    ?= studies/$(MODEL)-fashion-mnist$(if $(filter default,$(BUDGET)),,-$(BUDGET))
ARGS   ?=

.PHONY: setup data postgres search dashboard test test-fast bench gpu-bundle clean-venv

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt-get is usable; elsewhere torchvision downloads it
# at first use (python -m search.train prints how if that fails).
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "warning: apt-get could not install dataset-fashion-mnist; torchvision will download it"; \
	else echo "note: Fashion-MNIST will be downloaded by torchvision at first use"; fi

# PostgreSQL server binaries for the multi-worker storage test (a throwaway server the test starts).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) \
	  || echo "warning: could not install postgresql; its test will be skipped"; \
	else echo "note: install PostgreSQL for the multi-worker storage test"; fi

search: setup
	$(PY) -m search.run --model $(MODEL) $(ARGS)

# Watch a study live (or look at a finished one): make dashboard MODEL=lenet5 [OUT=studies/...]
dashboard: setup
	@test -f $(OUT)/journal.log || (echo "no study in $(OUT); run make search MODEL=$(MODEL) or pass OUT=<study folder>"; exit 2)
	$(VENV)/bin/optuna-dashboard $(OUT)/journal.log --artifact-dir $(OUT)/artifacts $(ARGS)

# Two pytest workers (one thread each: conftest.py), a file per worker so a module's shared study is
# made once; then the few tests that need the machine to themselves (marked alone), on their own.
test: setup postgres
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30 -m "not alone" tests; status=$$?; \
	$(PY) -m pytest -q --durations=5 -m alone tests && exit $$status

# The fast tier (under 3 minutes here): no subprocesses, servers, Ray, long training, or tests that
# make whole studies of their own beyond the few shared per module.
test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

bench: setup
	$(PY) bench/throughput.py
	$(PY) bench/prune_cost.py

# Wheels + Fashion-MNIST for an offline GPU machine, in .gpu-bundle/ (carry it; see bench/gpu_run.sh).
gpu-bundle: setup
	PYTHON=$(PY) bash bench/gpu_bundle.sh

clean-venv:
	rm -rf $(VENV)
