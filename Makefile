# One set of commands for a fresh machine and for CI (.ci/run calls `make test`).
#   make run    install everything, build + embed the sample dataset, open the app
#   make test   install everything, lint (ruff, mypy, the layers contract), run the test suite
#               (benchmarks excluded)
#   make label-studio   Label Studio in .venv-labelstudio, for the server test (make test does it)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
PORT   ?= 8501
# Label Studio lives in a venv of its own: its pinned Django stack conflicts with Shoal's.
LS_VENV  ?= .venv-labelstudio
LS_PIN   := label-studio==1.23.2
LS_STAMP := $(LS_VENV)/.installed-$(shell echo '$(LS_PIN)' | sha1sum | cut -c1-12)
LS_DB    := $(CURDIR)/$(LS_VENV)/migrated

.PHONY: install label-studio system-deps run test test-fast lint bench sample-data clean map-js

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

# The migrated database (what `label-studio start` first does, ~80 s on 2 cores) is kept, so the
# test's server starts from a copy in ~15 s. Update check and analytics off: no traffic leaves.
$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet '$(LS_PIN)'
	rm -rf $(LS_DB)
	HOME=$(LS_DB) LABEL_STUDIO_BASE_DATA_DIR=$(LS_DB) DJANGO_DB=sqlite LATEST_VERSION_CHECK=false \
	  COLLECT_ANALYTICS=false SENTRY_DSN= $(LS_VENV)/bin/python -c 'from label_studio.server \
	  import _setup_env, _apply_database_migrations; _setup_env(); _apply_database_migrations()'
	test -s $(LS_DB)/label_studio.sqlite3
	rm -f $(LS_VENV)/.installed-*; touch $@

label-studio: $(LS_STAMP)

# The Map's browser code is one committed bundle (shoal/app/static/map.js, regl-scatterplot and
# its MIT/ISC/BSD dependencies); rebuild it after changing shoal/app/frontend/map (Node >= 18).
map-js:
	cd shoal/app/frontend/map && npm ci && npm run build

system-deps:
	bash scripts/install_system_deps.sh

run: install
	$(BIN)/shoal demo --port $(PORT)

test: install system-deps lint label-studio
	SHOAL_REQUIRE_LABEL_STUDIO=1 $(BIN)/python -m pytest -m "not benchmark" --durations=15

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
	rm -rf $(VENV) $(LS_VENV) shoal-workspace .pytest_cache .mypy_cache .ruff_cache
