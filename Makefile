# The two commands: `make run` (the whole product on this machine) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test lint worker record-histories clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(PY) devstack.py

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

worker: $(VENV)/.installed
	$(PY) worker.py

# Re-record the participant histories that the replay tests check the workflow code against.
record-histories: $(VENV)/.installed
	$(PY) -m tests.record_histories

clean:
	rm -rf .data
