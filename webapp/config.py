"""Layered configuration: defaults here, then instance/config.py, then MAILROOM_* variables."""
import json
import os
from pathlib import Path


class Defaults:
    SECRET_KEY = None  # read from instance/flask-secret-key when not configured
    DATABASE_URL = None  # None: SQLite in the instance folder
    SECRET_KEYS = None  # Fernet keys, newest first; None: instance/secret-keys
    WTF_CSRF_TIME_LIMIT = None  # the token lives as long as the session
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False  # also Secure whenever the request came over HTTPS
    PREFERRED_URL_SCHEME = "http"
    TRUSTED_PROXIES = 0  # how many proxies in front of gunicorn set X-Forwarded-*
    LOG_LEVEL = "INFO"
    AUTO_MIGRATE = None  # None: upgrade automatically only on the embedded SQLite default


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
