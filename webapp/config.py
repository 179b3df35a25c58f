"""Layered configuration: defaults here, then instance/config.py, then MAILROOM_* variables."""
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from .mail.dns import parse_nameservers


class Defaults:
    SECRET_KEY = None  # read from instance/flask-secret-key when not configured
    DATABASE_URL = None  # None: SQLite in the instance folder
    DATABASE_BUSY_TIMEOUT = 30  # SQLite: seconds to wait for another writer before answering 503
    SECRET_KEYS = None  # Fernet keys, newest first; None: instance/secret-keys
    WTF_CSRF_TIME_LIMIT = None  # the token lives as long as the session
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False  # also Secure whenever the request came over HTTPS
    PREFERRED_URL_SCHEME = "http"
    TRUSTED_PROXIES = 0  # how many proxies in front of gunicorn set X-Forwarded-*
    LOG_LEVEL = "INFO"
    AUTO_MIGRATE = None  # None: upgrade automatically only on the embedded SQLite default
    # Find settings and the deliverability checks ask this DNS resolver and nothing else: addresses with optional
    # ports ("192.0.2.53, [2001:db8::53]:5353"); empty: the system's (/etc/resolv.conf)
    DNS_RESOLVER = ""
    EXTRA_CA_CERTS = None  # a PEM file of CA certificates trusted for every outgoing TLS connection
    REDIS_URL = None  # sessions and rate limits in Redis (shared by several hosts); None: in the database
    SESSION_IDLE_MINUTES = 120  # a session ends after this long without a request
    SESSION_MAX_HOURS = 12  # and this long after sign-in in any case
    CHECKS_PER_PROCESS = 4  # Validate runs and sample mails at once in one app process (each holds a thread)
    CHECKS_PER_PORTAL = 2  # ... of which one portal may use this many
    # failed sign-ins (Flask-Limiter's notation), counted by every process together: an account from one
    # client address first; an address whatever the account; an account from everywhere only at a much
    # higher count (so a flood from elsewhere does not lock the owner out at once)
    SIGN_IN_LIMIT_PER_ACCOUNT_AND_ADDRESS = "10 per 15 minutes"
    SIGN_IN_LIMIT_PER_ADDRESS = "30 per 15 minutes"
    SIGN_IN_LIMIT_PER_ACCOUNT = "100 per 15 minutes"
    SAMPLE_LIMIT_PER_USER = "10 per minute"
    # Password recovery by mail (webapp/recovery.py): the app's address as people reach it, the root of every
    # link in Mailroom's own mail ("https://mailroom.example.com", or with the path it is served under); None:
    # no recovery mail is sent
    PUBLIC_URL = None
    PASSWORD_RESET_MINUTES = 30  # a recovery link works this long, once
    PASSWORD_RESET_LIMIT_PER_ADDRESS = "3 per hour"  # recovery mails asked for one address (Flask-Limiter's notation)
    PASSWORD_RESET_LIMIT_PER_CLIENT = "10 per hour"  # ... and by one client address, whatever the address
    # Delivery (webapp/delivery), with Postfix's defaults as the model
    DELIVERY_WORKERS = 4  # threads of one `flask mail worker` (each sends one message at a time)
    DELIVERY_QUEUE_NAME = "mailroom"  # Huey's queue: SQLite in instance/huey.sqlite3, or Redis with REDIS_URL
    DELIVERY_RETRY_FIRST_SECONDS = 300  # wait after the first temporary failure (minimal_backoff_time)
    DELIVERY_RETRY_MAX_SECONDS = 4000  # ... doubling up to this (maximal_backoff_time)
    DELIVERY_RETRY_JITTER = 0.2  # each wait drawn up to this fraction shorter or longer
    DELIVERY_LIFETIME_HOURS = 120  # then queued or held mail fails (maximal_queue_lifetime: 5 days)
    DELIVERY_LEASE_SECONDS = 120  # a claimed message or connection is its worker's this long (renewed while used)
    DELIVERY_SWEEP_SECONDS = 30  # how often leases of dead workers and mail without a job are looked for
    DELIVERY_PROBE_SECONDS = 60  # how often a failing server is checked, to take it back when it works
    DELIVERY_BUSY_RETRY_SECONDS = 5  # a message whose server has no free connection waits about this long
    DELIVERY_BATCH = 100  # messages one delivery job sends before the next job goes on
    DELIVERY_KEEP_CONNECTION_SECONDS = 3  # a thread's connections stay open this long after its job, for the next
    DELIVERY_NOTICE_MINUTES = 60  # at most one admin notice of each kind per portal this often
    DELIVERY_SUMMARY_HOUR = 6  # the hour (UTC) of the daily summary of failed mail
    DELIVERY_PURGE_BODY_DAYS = 7  # message bodies are deleted this long after delivery or failure
    DELIVERY_KEEP_DAYS = 90  # ... and the messages with their attempts this long after
    MESSAGE_MAX_BYTES = 15 * 1024 * 1024  # a message as built (MIME, attachments base64-encoded)
    ATTACHMENTS_MAX_BYTES = 10 * 1024 * 1024  # a message's attachments together, as files
    MESSAGE_MAX_RECIPIENTS = 500  # To, Cc and Bcc together (Exchange Online's limit per message)
    API_REQUEST_MAX_BYTES = 20 * 1024 * 1024  # an API request's body (attachments come base64-encoded)
    API_LIMIT_PER_KEY = "600 per minute"  # API requests per key (Flask-Limiter's notation)

    # SMTP submission: `flask mail relay` (webapp/submission)
    SUBMISSION_HOST = "127.0.0.1"  # where the listener binds; "0.0.0.0" or "::" for every interface
    SUBMISSION_STARTTLS_PORT = 2587  # plain connection, STARTTLS before AUTH
    SUBMISSION_TLS_PORT = 2465  # implicit TLS ("SSL/TLS")
    SUBMISSION_TLS_CERT = None  # a PEM certificate (with its chain); None: a self-signed one in instance/
    SUBMISSION_TLS_KEY = None  # its private key in PEM
    SUBMISSION_HOSTNAME = None  # the name in the greeting and the self-signed certificate; None: this host's name
    SUBMISSION_MAX_MESSAGE_BYTES = 25 * 1024 * 1024  # advertised with SIZE before sign-in; no credential allows more
    SUBMISSION_MAX_RECIPIENTS = 500  # RCPT TO per message (Exchange Online's limit)
    SUBMISSION_AUTH_FAILURES_PER_ADDRESS = "10 per 15 minutes"  # failed AUTH per client address, then 421
    SUBMISSION_AUTH_FAILURE_DELAY = 1.0  # seconds before a refused AUTH is answered
    SUBMISSION_PROXY_PROTOCOL = False  # behind a TCP load balancer that sends the PROXY protocol header (v1/v2)
    SUBMISSION_IDLE_TIMEOUT = 300  # seconds a client may stay silent before the listener hangs up


def load(app, overrides: dict | None = None) -> None:
    app.config.from_object(Defaults)
    app.config.from_pyfile("config.py", silent=True)
    app.config.update(_from_environment(os.environ))
    if overrides:
        app.config.update(overrides)
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = f"sqlite:///{Path(app.instance_path) / 'mailroom.sqlite3'}"
    if app.config["AUTO_MIGRATE"] is None:
        app.config["AUTO_MIGRATE"] = app.config["DATABASE_URL"].startswith("sqlite")
    try:
        parse_nameservers(str(app.config["DNS_RESOLVER"] or ""))
    except ValueError as error:
        raise ValueError(f"DNS_RESOLVER: {error}") from None
    app.config["PUBLIC_URL"] = public_url(app.config["PUBLIC_URL"])
    extra = app.config["EXTRA_CA_CERTS"]
    app.config["EXTRA_CA_PEM"] = Path(extra).read_text() if extra else ""


def public_url(value) -> str | None:
    """The configured public address without a trailing slash; ValueError for one that is not http(s)://host."""
    if not value:
        return None
    text = str(value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or any(ch.isspace() for ch in text):
        raise ValueError(f"PUBLIC_URL: {value!r} is not an address such as https://mailroom.example.com")
    return text


def _from_environment(environ) -> dict:
    """MAILROOM_FOO=value sets FOO; values that parse as JSON (numbers, true/false) are typed."""
    config = {}
    for name, raw in environ.items():
        if name.startswith("MAILROOM_"):
            config[name.removeprefix("MAILROOM_")] = _parse(raw)
    return config


def _parse(raw: str):
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, (bool, int, float)) else raw
