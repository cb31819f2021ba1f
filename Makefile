# On a fresh machine with Python >= 3.11:
#   make demo   set everything up, then run the offline end-to-end demo
#   make test   set everything up, then run lint and the whole test suite
#   make test-fast   the pure-core and unit tests only (no stage processes, servers or GPU)
# Setup is a virtual environment in .venv with the tested versions from constraints.txt.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/streamseg demo

lint: setup
	$(BIN)/ruff format --check streamseg tests
	$(BIN)/ruff check streamseg tests

# markers (pyproject.toml) that test-fast leaves out: real stage processes, servers, a GPU
FAST_DESELECT := not slow and not rtsp and not cuda and not ray and not mqtt and not redis

# every test; the 25 slowest are listed at the end (pytest-timeout fails a hung one by name)
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "$(FAST_DESELECT)" --durations=10

clean:
	rm -rf $(VENV) streamseg-demo
