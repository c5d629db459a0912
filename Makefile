# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Tests and CI read the offline data sets from the shared folder beside the clone.
export ARCHER_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: venv install install-dev demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Creates or refreshes .venv; torch is pinned below 2.14 so the local CPU wheel is used.
install: $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e .

install-dev: $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e ".[dev]"

demo: install
	$(VENV)/bin/archer demo

test: install-dev
	$(VENV)/bin/ruff check archer experiments evals dashboards tests bench
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check archer experiments evals dashboards tests bench

bench: install
	$(PY) bench/loss_overhead.py

clean:
	rm -rf $(VENV) runs mlruns mlflow.db *.egg-info
