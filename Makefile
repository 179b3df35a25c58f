# make run   — set everything up on a fresh machine and serve on http://127.0.0.1:8000
# make test  — install what the tests need (Debian's chromium included) and run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# One gunicorn worker per core (keep-alive connections stick to the worker that took them: with
# fewer workers than cores, some cores idle under load). Override: make run WORKERS=4 THREADS=8
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
THREADS ?= 8
VENDOR := webapp/static/vendor
# --reuse-port: every worker listens on its own socket (SO_REUSEPORT) and the kernel spreads new
# connections evenly over them; with one shared socket, a burst of kept-alive connections often all
# land on the worker that wakes first and stay there while other cores idle (bench/README.md).
# Beware: a second server started on the same port then does not fail with "address in use", it
# silently takes a share of the connections.
# --preload: the app is made once in the master and the workers are forked from it, sharing its
# memory (copy-on-write). Safe here: create_app closes the database connections it opened, Huey is
# made on first use, and Redis clients reconnect in a new process (webapp/db.py, delivery/queue.py).
# --forwarded-allow-ips '': gunicorn itself trusts no X-Forwarded-* header (its default trusts them from
# 127.0.0.1); the app alone does, and only as MAILROOM_TRUSTED_PROXIES says.
GUNICORN := $(BIN)/gunicorn --no-control-socket --worker-class gthread --workers $(WORKERS) --threads $(THREADS) --reuse-port --preload --timeout 120 --forwarded-allow-ips ''

.PHONY: run test test-postgres serve assets venv test-deps bench bench-scale bench-delivery bench-api-connections lock clean

# The access log shows paths without their query string: the OAuth callback's carries a code, and a
# consent link's its token (/oauth/consent?link=...).
ACCESS_LOG := --access-logfile - --access-logformat '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'

# Mailroom's commands (the `mailroom` script; `python -m webapp` is the same without depending on the script
# being installed yet): `flask --app webapp` runs them too, after loading every Flask extension's commands.
MAILROOM := $(BIN)/python -m webapp

# The delivery worker and the SMTP submission listener run beside gunicorn; Ctrl-C stops all three
# (the worker finishes the messages under way, the listener the one it is storing).
# Recovery links of this local run point to where it serves, unless MAILROOM_PUBLIC_URL says otherwise.
run: export MAILROOM_PUBLIC_URL ?= http://$(HOST):$(PORT)
run: venv assets
	$(MAILROOM) init --url http://$(HOST):$(PORT)
	@$(MAILROOM) mail worker & worker=$$!; \
	$(MAILROOM) mail relay & relay=$$!; \
	trap 'kill -TERM $$worker $$relay 2>/dev/null; wait $$worker $$relay' EXIT INT TERM; \
	echo "Mailroom serves on http://$(HOST):$(PORT)/ (gunicorn's own \"Listening at:\" line is blank with --reuse-port)"; \
	$(GUNICORN) --bind $(HOST):$(PORT) $(ACCESS_LOG) 'webapp:create_app()'

serve: venv assets
	@echo "Mailroom serves on http://$(HOST):$(PORT)/"
	$(GUNICORN) --bind $(HOST):$(PORT) 'webapp:create_app()'

venv: $(VENV)/.installed

# Installs exactly the versions in constraints.txt (pyproject.toml keeps the lower bounds).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# After changing dependencies in pyproject.toml: resolve them afresh and pin the result.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[test]'
	{ echo "# Exact versions for make run / make test (make lock regenerates this from pyproject.toml)."; \
	  .lock-venv/bin/pip freeze | grep -v -i -e '^mailroom' ; } > constraints.txt
	rm -rf .lock-venv

assets: $(VENDOR)/.installed

$(VENDOR)/.installed: package.json
	npm install --no-audit --no-fund --silent
	mkdir -p $(VENDOR)
	cp node_modules/htmx.org/dist/htmx.min.js $(VENDOR)/htmx.min.js
	cp node_modules/@picocss/pico/css/pico.min.css $(VENDOR)/pico.min.css
	touch $@

# The tests' peers from Debian: chromium (browser tests), the proxies (microsocks, Dante, tinyproxy),
# Dovecot (POP3 and IMAP) and swaks (an SMTP client for the submission listener). The tests start their
# own instances on free ports of 127.0.0.1.
PEER_PROGRAMS := chromium microsocks danted tinyproxy dovecot swaks
PEER_PACKAGES := chromium microsocks dante-server tinyproxy dovecot-core dovecot-pop3d dovecot-imapd swaks

test-deps: venv assets
	@missing=; for program in $(PEER_PROGRAMS); do PATH="$$PATH:/usr/sbin:/sbin" command -v $$program >/dev/null || missing=yes; done; \
	[ -z "$$missing" ] || { \
	  echo "Installing Debian's $(PEER_PACKAGES) for the tests' peers"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PEER_PACKAGES) >/dev/null; }

test: test-deps
	$(BIN)/pytest

# The same suite on PostgreSQL (default: the local server's database "test").
test-postgres: test-deps
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} $(BIN)/pytest

bench: venv assets
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/run.py

# Issue 13's goals: lists with 1,000 servers, 10,000 users, 3,000 portals, 1,000,000 events; memory;
# the command line; Validate and the sample mail against smtplib (bench/README.md). A few minutes.
bench-scale: venv assets
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/scale.py

# Delivery, API enqueue and SMTP submission against Postfix's smtp-sink / smtp-source (bench/README.md);
# bench/postfix_tools.py fetches Debian's postfix package into bench/tools/ (nothing is installed).
bench-delivery: venv assets
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/delivery.py

# Graph, the Gmail API and EWS: messages over one kept HTTPS connection against a connection per message,
# the tests' peers on 127.0.0.1 (bench/api_connections.py; BENCH_API_MESSAGES, BENCH_API_ROUNDS). A few minutes.
bench-api-connections: venv
	$(BIN)/python bench/api_connections.py

clean:
	rm -rf $(VENV) node_modules $(VENDOR)
