# Set-up, tests and the demo. Every target works on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build of PyTorch; pip takes it from the local wheel cache where one exists.
TORCH_SPEC ?= torch==2.13.0
DATA ?= dialog

.PHONY: setup test test-slow demo bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"

setup: $(PY)

test: $(PY)
	$(PY) -m pytest -q

test-slow: $(PY)
	$(PY) -m pytest -q -m slow

# The whole job on real public data: prepare, pre-train USE and its baselines, evaluate, summarise.
demo: $(PY)
	$(PY) scripts/run_demo.py --data $(DATA)

bench: $(PY)
	$(PY) bench/bench_fep.py
	$(PY) bench/bench_embedding.py
	$(PY) bench/bench_training.py --hidden 128 --layers 2 --heads 4
	$(PY) bench/bench_state.py --threads 1
	$(PY) bench/bench_eval.py
