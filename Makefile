# make run   — set everything up on a fresh machine and serve on http://127.0.0.1:8000
# make test  — install what the tests need (Debian's chromium included) and run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2
THREADS ?= 8
VENDOR := webapp/static/vendor
GUNICORN := $(BIN)/gunicorn --no-control-socket --worker-class gthread --workers $(WORKERS) --threads $(THREADS) --timeout 120

.PHONY: run test test-postgres serve assets venv test-deps bench clean

run: venv assets
	$(BIN)/flask --app webapp init --url http://$(HOST):$(PORT)
	$(GUNICORN) --bind $(HOST):$(PORT) --access-logfile - 'webapp:create_app()'

serve: venv assets
	$(GUNICORN) --bind $(HOST):$(PORT) 'webapp:create_app()'

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

assets: $(VENDOR)/.installed

$(VENDOR)/.installed: package.json
	npm install --no-audit --no-fund --silent
	mkdir -p $(VENDOR)
	cp node_modules/htmx.org/dist/htmx.min.js $(VENDOR)/htmx.min.js
	cp node_modules/@picocss/pico/css/pico.min.css $(VENDOR)/pico.min.css
	touch $@

test-deps: venv assets
	@command -v chromium >/dev/null || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: test-deps
	$(BIN)/pytest

# The same suite on PostgreSQL (default: the local server's database "test").
test-postgres: test-deps
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} $(BIN)/pytest

bench: venv assets
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) node_modules $(VENDOR)
