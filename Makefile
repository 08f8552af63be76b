# enrich: two commands do all set-up from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench chaos clean help

help:
	@echo "make demo   - install into .venv and run the end-to-end demo (embedded broker, sample catalog, demo model)"
	@echo "make test   - install into .venv and run the whole test suite"
	@echo "make lint   - ruff + import rules (.importlinter)"
	@echo "make chaos  - fault-injection scenarios (crash loops, clean stops, rebalances, broker stall and restart; docs/reliability.md)"
	@echo "make bench  - benchmarks: pipeline, model throughput, image fetch (Markdown tables for docs/benchmarks.md)"

# A first install puts torch (a CUDA build on x86_64) into .venv, about 6 GB: warn up front, so a pip
# failure half-way ("No space left on device") comes with its reason. A warning, not a refusal: a CPU-only
# torch (aarch64, or one already on the machine) needs far less.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; \
	free >= 7 or print(f'enrich: warning: a first install takes about 6.5 GB (torch); {free:.1f} GB free here', file=sys.stderr)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# promtool for tests/test_deploy.py (the alert rules): from Debian's prometheus package, unpacked into .venv/bin.
$(BIN)/promtool: | $(STAMP)
	.ci/install-promtool $(BIN)

demo: install
	$(BIN)/enrich demo

test: install $(BIN)/promtool
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: install $(BIN)/promtool
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

chaos: install
	$(BIN)/pytest -q -s -m chaos tests/chaos $(PYTEST_ARGS)
	$(BIN)/pytest -q -s tests/chaos/test_hostile_catalogue.py $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_fetch.py
	$(BIN)/python bench/bench_memory.py

clean:
	rm -rf .cache .pytest_cache .ruff_cache
