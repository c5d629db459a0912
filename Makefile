# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Tests and CI read the offline data sets from the shared folder beside the clone.
export ARCHER_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: venv install install-dev system-deps demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# bubblewrap isolates model-generated code (no network, private /tmp, read-only view).
# Installed with apt when we are root and it is missing; otherwise the code verifier warns
# loudly and falls back to rlimits only.
system-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || \
	      echo "WARNING: could not install bubblewrap; code runs without the sandbox"; \
	  else echo "WARNING: bubblewrap missing; install it (apt-get install bubblewrap)"; fi; }
	@# headless chromium + its driver: the dashboard browser test (tests/dashboards)
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	      echo "WARNING: could not install chromium; the dashboard browser test will skip"; \
	  else echo "WARNING: chromium missing; install it (apt-get install chromium chromium-driver)"; fi; }

# Creates or refreshes .venv; torch is pinned below 2.14 so the local CPU wheel is used.
install: $(PY) system-deps
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e .

install-dev: $(PY) system-deps
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
