# `make run` and `make test` set up whatever is missing first (host packages, .venv).
# Only scripts/setup-host.sh needs root: as a normal user it calls sudo for what is
# missing, and nothing else here does.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= quick

.PHONY: setup setup-test host host-test venv run test unit integration lint type format docs bench doctor clean

setup: host venv

# The suite also needs what no lab run does (a browser for the HTML report).
setup-test: host-test venv

host:
	./scripts/setup-host.sh

host-test:
	./scripts/setup-host.sh --test

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: setup
	$(BIN)/vfio-lab run $(SCENARIO)

# The whole suite, as CI runs it: lint, types, unit tests, then real VMs.
test: setup-test
	$(BIN)/tox run -e lint,type,unit,integration

unit: venv
	$(BIN)/pytest -m "not vm"

integration: setup-test
	$(BIN)/pytest -m vm

lint: venv
	$(BIN)/ruff check lab guest_tests tests benchmarks
	$(BIN)/ruff format --check lab guest_tests tests benchmarks
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff format lab guest_tests tests benchmarks
	$(BIN)/ruff check --fix lab guest_tests tests benchmarks

type: venv
	$(BIN)/mypy
	MYPYPATH=guest_tests $(BIN)/mypy --config-file /dev/null --strict --python-version 3.11 -p vfiolib

# The generated parts of docs/commands.md and docs/scenarios.md (tests/unit/test_docgen.py
# fails when they differ from the code).
docs: venv
	$(BIN)/python -m lab.cli.docgen

bench: setup
	$(BIN)/python benchmarks/bench.py

doctor: venv
	$(BIN)/vfio-lab doctor

clean:
	rm -rf $(VENV) .tox results
