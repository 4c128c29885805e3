# The two commands a new user needs are `make demo` and `make test`; the rest serve them.
SHELL := /bin/bash
ROOT := $(CURDIR)
PY := $(ROOT)/.venv/bin/python
export PATH := $(ROOT)/.tools/bin:$(PATH)

.PHONY: bootstrap demo test test-fast lint lock package clean

bootstrap:
	@bash ci/bootstrap.sh

# Scheduler, two workers and the backend started with the chart's own rendered commands,
# one TPOT job on the bundled dataset, result printed.
demo: bootstrap
	@$(PY) -m tests.harness.demo

# Every tier that can run on this machine; tiers that cannot say why in one line and skip.
test: bootstrap
	@$(PY) -m pytest $(PYTEST_ARGS)

# Render and policy tiers only (well under a minute).
test-fast: bootstrap
	@$(PY) -m pytest -m "render or policy" $(PYTEST_ARGS)

lint: bootstrap
	@$(PY) -m ruff check backend tests benchmarks
	@$(PY) -m ruff format --check backend tests benchmarks

# Refresh backend/requirements.lock from a clean resolve (run after changing backend deps).
lock:
	@bash ci/lock.sh

# Chart package and repository index into dist/charts.
package: bootstrap
	@mkdir -p dist/charts && helm package charts/tpot -d dist/charts && helm repo index dist/charts

clean:
	rm -rf .venv .tools .cache dist
