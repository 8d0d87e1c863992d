# The two commands of the README: `make demo` and `make test`. Everything they need is
# installed here, into .venv, so a fresh clone (and CI) needs nothing by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -c constraints.txt
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m deepstart train --data shapes --model vgg_small --epochs 6 --lr 3e-3 --seed 0 --out runs

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

# The speed benchmarks of docs/speed.md (minutes to an hour; not part of `make test`). Run
# them on a quiet machine: bench/peers.py creates bench/.venv-keras (TensorFlow) on first use.
bench: $(STAMP)
	$(PY) bench/ceiling.py
	$(PY) bench/ablations.py
	$(PY) bench/layers.py
	$(PY) bench/peers.py
	$(PY) bench/omp_wait.py
	$(PY) bench/recipes.py
	$(PY) bench/model_defaults.py --lr-auto
	$(PY) bench/guard_models.py

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
