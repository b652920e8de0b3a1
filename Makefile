# Loquent — the two commands: `make run` (demo) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DB ?= .demo/loquent.db

.PHONY: run test lint typecheck test-unit test-e2e bench install clean chromium

UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
# Installs come from uv.lock (`uv lock` after changing pyproject.toml), into $(VENV).
SYNC := UV_PROJECT_ENVIRONMENT=$(abspath $(VENV)) $(UV) sync --frozen --inexact --quiet
RUN_STAMP := $(VENV)/.installed-run

$(PY):
	python3 -m venv $(VENV)

$(UV): | $(PY)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)

# Tests and tools: both database drivers, Redis, the test and lint groups.
$(STAMP): $(UV) pyproject.toml uv.lock
	$(SYNC) --all-extras --group dev
	@touch $(STAMP) $(RUN_STAMP)

# The embedded default needs neither extra. (--inexact: keep uv itself, and what `make test` added.)
$(RUN_STAMP): $(UV) pyproject.toml uv.lock
	$(SYNC) --no-default-groups
	@touch $(RUN_STAMP)

install: $(STAMP)

## run: set everything up and start the demo (SQLite, in-process events/jobs, Twilio simulator)
run: $(RUN_STAMP)
	@mkdir -p .demo
	LOQUENT_DATABASE_URL=$${LOQUENT_DATABASE_URL:-sqlite+aiosqlite:///$(DEMO_DB)} $(VENV)/bin/loquent demo

## test: lint, type-check, the unit/integration suite, then the browser suite
test: $(STAMP) chromium lint typecheck test-unit test-e2e

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" -p no:cacheprovider -rs

test-e2e: $(STAMP) chromium
	$(PY) -m pytest -q -m e2e -p no:cacheprovider -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check loquent tests bench
	$(VENV)/bin/ruff format --check loquent tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## chromium: Debian's Chromium for the browser tests (no browser downloads)
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: browser tests will be skipped (apt-get install chromium)"; fi; \
	fi

## bench: ingest (events/s, latency, RSS; each against a bare baseline in the same run) and
## SSE fan-out (1,000 clients) on SQLite, and on PostgreSQL when LOQUENT_BENCH_POSTGRES_URL
## names a server database it may create a scratch database next to. Needs wrk (installed
## with apt when missing and run as root).
bench: $(STAMP)
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk missing: apt-get install wrk"; exit 1; fi; \
	fi
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
