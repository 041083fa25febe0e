# Every target builds its own virtualenv in .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench mutate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/pytest -n auto

lint: $(STAMP)
	$(BIN)/ruff check discoveryctl tests benchmarks migrations scripts
	$(BIN)/ruff format --check discoveryctl tests benchmarks migrations scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

# Mutation testing of the rules that decide a seller's fate ([tool.mutmut] in pyproject.toml);
# fails while any mutant survives (one whose tests hang, a timeout, counts as caught). Uses the local PostgreSQL unless told otherwise.
# MUTANTS='discoveryctl.db.leases*' limits a run to the mutants of one module.
mutate: $(STAMP)
	rm -rf mutants
	DISCOVERY_TEST_POSTGRES_URL=$${DISCOVERY_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test} \
		$(BIN)/mutmut run --max-children 2 $(MUTANTS) > .mutmut.log 2>&1 || (tail -20 .mutmut.log; exit 1)
	@tail -c 300 .mutmut.log | tr '\r' '\n' | tail -2
	@$(BIN)/mutmut results | grep ': timeout$$' || true  # caught: its tests never finished
	@if $(BIN)/mutmut results | grep -v ': timeout$$' | grep -q .; then \
		$(BIN)/mutmut results | grep -v ': timeout$$'; exit 1; fi
	@echo "no surviving mutant"

bench: $(STAMP)
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/status_scale.py
	$(BIN)/python benchmarks/import_scale.py
	$(BIN)/python benchmarks/sandbox_throughput.py
	$(BIN)/python benchmarks/refresh_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants .mutmut.log
