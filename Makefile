# One set of commands for a fresh machine and for CI (.ci/run calls `make test`).
#   make run    install everything, build + embed the sample dataset, open the app
#   make test   install everything, lint (ruff, mypy, the layers contract), run the test suite
#               (benchmarks excluded)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
PORT   ?= 8501

.PHONY: install system-deps run test test-fast lint bench sample-data clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

system-deps:
	bash scripts/install_system_deps.sh

run: install
	$(BIN)/shoal demo --port $(PORT)

test: install system-deps lint
	$(BIN)/python -m pytest -m "not benchmark" --durations=15

test-fast: install
	$(BIN)/python -m pytest -m "not benchmark and not slow and not browser"

lint: install
	$(BIN)/ruff check shoal analysis embedding registry pages app.py asgi.py tests benchmarks scripts
	$(BIN)/ruff format --check shoal analysis embedding registry pages app.py asgi.py
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install system-deps
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

sample-data: install
	$(BIN)/python scripts/build_sample_data.py

clean:
	rm -rf $(VENV) shoal-workspace .pytest_cache .mypy_cache .ruff_cache
