# Two entry points, each doing all of its set-up on a fresh machine:
#   make bench   - create .venv, install kdbench, run the default benchmark (law, embedded tiny models)
#   make test    - create .venv, install kdbench with its test extras, run the test suite
# Everything lands in .venv/ and .kdbench/ inside this checkout.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch that these machines keep on disk; a bare `torch` would
# pull a multi-GB CUDA build. Override with TORCH_SPEC="torch==X" elsewhere.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: bench test venv test-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e .
	touch $@

venv: $(VENV)/.installed

bench: venv
	$(VENV)/bin/kdbench run law

$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) install --quiet -e ".[test]"
	touch $@

test-deps: $(VENV)/.test-installed

test: test-deps
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .kdbench reports/leaderboards
