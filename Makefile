# Two commands, on a fresh machine with Python >= 3.11:
#   make demo   set everything up, then run the offline end-to-end demo
#   make test   set everything up, then run lint and the whole test suite
# Setup is a virtual environment in .venv with the tested versions from constraints.txt.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

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

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) streamseg-demo
