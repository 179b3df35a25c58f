"""Mailroom: portal administrators configure how their portal sends mail."""
import gc

# Importing the stack below makes some 160,000 objects the collector tracks and no garbage; its full passes
# over them took about a quarter of a short command's CPU. So no collection while it is imported, and what it
# made is left out of every later one (gc.freeze: also what a forked gunicorn worker then shares).
_collecting = gc.isenabled()
gc.disable()
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from flask import Flask  # noqa: E402
from werkzeug.middleware.proxy_fix import ProxyFix  # noqa: E402

from . import cli, config, db, delivery, instance, network, security, slots  # noqa: E402

gc.freeze()
if _collecting:
    gc.enable()
log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None, instance_path: str | None = None, *, pages: bool | None = None) -> Flask:
    """The app. Without `pages` (by default: when this process is `flask … <command>` for one of the
    short commands, `flask --app webapp mail check …`, see cli.WITHOUT_PAGES) it has no blueprints
    (their routes take most of the start-up) and no start-up warning about unreadable secrets (the
    command says so itself when it meets one)."""
    if pages is None:
        pages = not _short_command()
    app = Flask(__name__, instance_relative_config=True,
                instance_path=instance_path or os.environ.get("MAILROOM_INSTANCE_PATH"))
    instance.private_folder(Path(app.instance_path))  # keys and, by default, the database
    config.load(app, test_config)
    instance.load_secrets(app)
    _configure_logging(app.config["LOG_LEVEL"])
    if app.config["TRUSTED_PROXIES"]:
        hops = int(app.config["TRUSTED_PROXIES"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    if pages:
        _guard_pages(app)
    security.init_app(app)
    slots.init_app(app)
    db.init_app(app)
    delivery.init_app(app)
    network.init_app(app)
    if pages:
        from . import views  # the pages, their forms and templates

        views.init_app(app)
    cli.init_app(app)
    if pages:
        _tell_about_unreadable_secrets(app)
    db.forget_connections(app)
    return app


def _guard_pages(app: Flask) -> None:
    """What only the pages and the API use: CSRF tokens, htmx, rate limits (their request hooks run
    before security's). Neither they nor the pages are imported for a short command."""
    from flask_wtf.csrf import CSRFProtect
    from htmx_flask import Htmx

    from . import limits

    CSRFProtect(app)
    Htmx(app)
    limits.init_app(app)


def _short_command() -> bool:
    """Whether this process is `flask … <command>` for a command that needs no pages. (Flask sets
    FLASK_RUN_FROM_CLI when its command line loads the app; the command is read from argv, as the
    app is made before click knows which subcommand runs.)"""
    import click

    if os.environ.get("FLASK_RUN_FROM_CLI") != "true" or click.get_current_context(silent=True) is None:
        return False
    return cli.without_pages(sys.argv[1:])


def _tell_about_unreadable_secrets(app) -> None:
    """Say at start when the configured keys cannot read stored secrets (a lost or wrong key file)."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import select

    from .credentials import unreadable_secrets
    from .models import Credential

    with app.app_context():
        try:
            count = unreadable_secrets(db.session().exec(select(Credential).where(Credential.secret.is_not(None))))
        except SQLAlchemyError:  # not migrated yet: nothing stored to read
            return
        finally:
            db.session().rollback()
    if count:
        log.warning("%d stored secret(s) cannot be read with the configured keys (MAILROOM_SECRET_KEYS or "
                    "instance/secret-keys): those servers fail until their secrets are entered again or the "
                    "key that encrypted them is restored", count)


def _configure_logging(level: str) -> None:
    """Mailroom's own lines (checks, sample mails; never a secret) go to stderr, beside gunicorn's."""
    logger = logging.getLogger(__name__)
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
        logger.addHandler(handler)
