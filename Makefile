# The two commands a new user needs (README): `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Tests use all cores by default; CI on 2 cores keeps this at 1 worker process.
PYTEST_ARGS ?=

.PHONY: setup demo test test-all lint check clean

$(BIN)/autopaint: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on this machine's disk (a newer one would pull CUDA builds)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/autopaint

# The web viewer (viewer/: NiiVue + plain JS modules, bundled by esbuild) is served by the API from
# services/api/static/viewer/ (git-ignored); rebuilt only when viewer/ changes. Needs Node.js 20 + npm.
VIEWER_STAMP := services/api/static/viewer/.built
VIEWER_SOURCES := viewer/package.json viewer/package-lock.json viewer/build.mjs $(wildcard viewer/src/*)

$(VIEWER_STAMP): $(VIEWER_SOURCES)
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { echo "make setup: the web viewer needs Node.js (20) and npm, not found on PATH (Debian: apt-get install nodejs npm; or https://nodejs.org)" >&2; exit 1; }
	@node -e 'const v = process.version; if (+v.slice(1).split(".")[0] < 18) { console.error("make setup: the web viewer needs Node.js >= 18 (20 expected), found " + v); process.exit(1) }'
	cd viewer && npm ci --no-audit --no-fund --loglevel=error
	cd viewer && node build.mjs
	touch $@

# The browser tests (tests/browser) drive the system Chromium with Playwright: installed here when
# possible (root + apt), else they are skipped with the reason.
.PHONY: viewer-browser
viewer-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && echo "installing chromium (browser tests)" && \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "note: no Chromium (apt-get install chromium): the browser tests (tests/browser) will be skipped"

setup: $(BIN)/autopaint $(VIEWER_STAMP) viewer-browser

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/pytest -m '' $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
