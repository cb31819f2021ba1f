# On a fresh machine with Python >= 3.11:
#   make demo   set everything up, then run the offline end-to-end demo
#   make test   set everything up, then run lint and the whole test suite
#   make test-fast   the pure-core and unit tests only (no stage processes, servers or GPU)
# Setup is a virtual environment in .venv with the tested versions from constraints.txt.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint clean gpu-check gpu-bundle

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/streamseg demo

lint: setup
	$(BIN)/ruff format --check streamseg tests examples
	$(BIN)/ruff check streamseg tests examples

# markers (pyproject.toml) that test-fast leaves out: real stage processes, servers, a GPU
FAST_DESELECT := not slow and not rtsp and not cuda and not ray and not mqtt and not redis

# every test; the 25 slowest are listed at the end (pytest-timeout fails a hung one by name)
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "$(FAST_DESELECT)" --durations=10

# On a CUDA machine: the CUDA tests, fp16 parity and the benchmark matrix in GPU_CHECK_BUDGET_S
# seconds (default 480), every figure into gpu-check.json; without CUDA a CPU dry run at tiny
# sizes. Runs from the tree with the machine's own python (no .venv needed; docs/benchmarks.md).
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PY) -m streamseg.tools.gpu_check --out gpu-check.json

# The wheels a machine without a package index needs beside torch and torchvision (CPython
# 3.12, manylinux x86_64; the versions in constraints.txt), into gpu-bundle/ (git-ignored).
GPU_BUNDLE := gpu-bundle
GPU_WHEELS := av pyzmq pycocotools
TEST_WHEELS := pytest pluggy==1.6.0 iniconfig==2.1.0 packaging==25.0
gpu-bundle:
	mkdir -p $(GPU_BUNDLE)
	$(GPU_PY) -m pip download -q --dest $(GPU_BUNDLE) --python-version 3.12 --only-binary=:all: --no-deps \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 \
	  $(foreach w,$(GPU_WHEELS) pytest,$(shell grep -E '^$(w)==' constraints.txt)) \
	  $(filter-out pytest,$(TEST_WHEELS))
	@du -sh $(GPU_BUNDLE) && ls $(GPU_BUNDLE)

clean:
	rm -rf $(VENV) streamseg-demo
