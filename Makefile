# atomplug: `make demo` and `make test` are all a fresh clone needs; both set up .venv/ first.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atomplug-installed
PYTEST_ARGS ?=

.PHONY: demo test bench setup clean

setup: $(STAMP)

# torch first, from TORCH_SPEC, so that resolving our own dependencies never pulls another torch.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP)
	$(PY) -m atomplug.examples.demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build .pytest_cache
