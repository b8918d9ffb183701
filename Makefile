# Two commands for a fresh machine:  `make demo` (set up, then condense the bundled digits)
# and `make test` (set up, then run the test suite).  TORCH pins the build for this CPU machine;
# elsewhere pass e.g. `make TORCH=torch demo` (the package itself asks for torch>=2.3).
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/gradmatch demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
