# dbdl — the two commands of the README:
#   make demo   create .venv, install dbdl, run the end-to-end demo on embedded DuckDB
#   make test   install everything (incl. the PostgreSQL server packages) and run the whole suite
# and: make bench (benchmarks into docs/bench/), make clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned here so that pip takes the CPU build; pyproject.toml only gives a range
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.dbdl-installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/dbdl demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
