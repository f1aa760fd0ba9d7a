# Two commands from a fresh clone: `make demo` and `make test` (`make test-all` adds the slow end-to-end scenarios).
# Everything goes into .venv/ in the repo. Stamp files record what was installed, keyed on the requirements files,
# so a second run installs nothing unless a requirements file changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch first: a plain `torch` pulls a multi-GB CUDA build, which is right on an NVIDIA machine only.
# On these CPU machines `torch==2.13.0` is a CPU wheel on local disk. Override with `make demo TORCH=...`.
TORCH  ?= $(shell nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
PYTEST_ARGS ?=

.PHONY: demo test test-all

# The preset is named: without one, pretrain.py trains the tutorial preset (hours) once its corpus is in data/.
demo: $(VENV)/.runtime
	$(PY) pretrain.py configs/demo.yaml

test: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "zhpretrain needs Python >= 3.10 (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "could not create $(VENV): install your Python's venv module (Debian/Ubuntu: apt install python3-venv)"; exit 1; }

# torch is installed once per venv: its build depends on the machine, not on a requirements file.
$(VENV)/.torch: | $(PY)
	$(PY) -m pip install -q "$(TORCH)"
	touch $@

$(VENV)/.runtime: requirements.txt $(VENV)/.torch
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: tests/requirements.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r tests/requirements.txt
	touch $@
