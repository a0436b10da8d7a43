# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ASSETS := src/ecoplat/web/static/vendor/.stamp
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# The suite runs in this many processes (pytest-xdist); tests on the shared Mosquitto stay in one.
TEST_WORKERS ?= 2

.PHONY: demo test install assets browser lint bench-tenancy bench-ingest bench-alarms clean

demo: install assets ## start the platform with demo data on the embedded defaults
	$(VENV)/bin/ecoplat demo

test: install assets browser ## run the whole suite
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'
	@touch $@

# Front-end assets (HTMX, ECharts) come from the npm registry into a git-ignored folder.
assets: $(ASSETS)

$(ASSETS): package.json scripts/vendor_assets.sh
	npm install --no-audit --no-fund --loglevel=error
	bash scripts/vendor_assets.sh
	@touch $@

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser).
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "Installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -q && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi

lint: install
	$(VENV)/bin/ruff check src tests bench

bench-%: install
	$(VENV)/bin/ecoplat bench $*

clean:
	rm -rf $(VENV) node_modules src/ecoplat/web/static/vendor var
