# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp files re-install only when pyproject.toml changes. `all` is every optional feature
# (PostgreSQL, the HTML report, metrics, webhooks): the demo shows them all.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	rm -f jobs/ledgers/sandbox/demo.jsonl
	BULK_MMS_SANDBOX_WEBHOOKS=1 $(BIN)/bulk-mms run jobs/demo.toml --sandbox; test $$? -le 1
	$(BIN)/bulk-mms -q track jobs/ledgers/sandbox/demo.jsonl --sandbox --follow --format table
	$(BIN)/bulk-mms report jobs/ledgers/sandbox/demo.jsonl --format table --html jobs/ledgers/sandbox/demo.html

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test
	$(BIN)/pytest -q

# the docs site, into the git-ignored site/; --strict: a broken link or anchor fails the build
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint typecheck unit docs

bench: $(VENV)/.installed-test
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache jobs/ledgers site
