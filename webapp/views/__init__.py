"""One blueprint per area; what every template may use."""
import logging

import sqlakeyset  # noqa: F401  (the lists' pagination: imported before gunicorn forks, see pagination.py)
from flask import render_template, request, url_for
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from sqlalchemy.exc import InternalError, OperationalError

from .. import db, sessions

from ..credentials import KIND_LABELS
from ..mail.transport import TRANSPORTS
from ..forms.render import init_app as init_field_rendering
from .. import consent
from . import api, auth, keys, oauth, portals, queue, servers, settings, smime, smtp_credentials, transcripts, users


def init_app(app) -> None:
    for blueprint in (api.bp, auth.bp, keys.bp, oauth.bp, portals.bp, queue.bp, servers.bp, settings.bp,
                      smime.bp, smtp_credentials.bp, transcripts.bp, users.bp):
        app.register_blueprint(blueprint)
    app.extensions["csrf"].exempt(api.bp)  # authorized by its key on each request, never by a session
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(400, _error(400, "Bad request", "The request could not be understood. Reload the page and try again."))
    app.register_error_handler(403, _error(403, "You may not do this", "Your role in this portal does not allow it."))
    app.register_error_handler(404, _error(404, "Not found", "There is nothing here, or you may not see it."))
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(RateLimitExceeded, _too_many)
    app.register_error_handler(OperationalError, _database_unwritable)
    app.register_error_handler(InternalError, _database_unwritable)
    app.context_processor(_helpers)
    init_field_rendering(app)
    with app.test_request_context():  # the same on every page: built once
        app.jinja_env.globals["assets"] = {name: url_for("static", filename=name) for name in ASSETS}
        paths = {endpoint: url_for(endpoint) for endpoint in NAV}
        paths.update({endpoint: url_for(endpoint, slug=SLUG_MARK) for endpoint in PORTAL_NAV})

    def nav(endpoint: str, slug: str = "") -> str:
        """The top bars' links, from paths built once (a portal's slug is put in its place)."""
        return request.script_root + paths[endpoint].replace(SLUG_MARK, slug)

    app.jinja_env.globals["nav"] = nav


ASSETS = ("vendor/pico.min.css", "app.css", "vendor/htmx.min.js", "app.js")
NAV = ("portals.index", "users.index", "settings.egress", "settings.system_mail", "auth.password", "auth.logout")
PORTAL_NAV = ("servers.index", "queue.index", "portals.members", "keys.index", "smtp_credentials.index", "smime.index",
              "portals.settings", "portals.history")
SLUG_MARK = "slug-mark"  # a slug (security.SLUG: lower-case letters, digits, "-") needs no quoting


def _error(status: int, title: str, text: str):
    def handler(error):
        if sessions.sessionless(request):
            return api.http_error(error)
        return render_template("error.html", title=title, text=text), status
    return handler


def _http_error(error: HTTPException):
    """Errors without a page of their own: JSON on the API's paths, else werkzeug's answer."""
    return api.http_error(error) if sessions.sessionless(request) else error


def _csrf_error(error):
    text = f"{error.description} Reload the page and try again."
    return render_template("error.html", title="The form expired", text=text), 400


def _too_many(error: RateLimitExceeded):
    what = "sign-in attempts" if request.endpoint == "auth.login" else "requests"
    text = f"Too many {what} ({error.description}). Wait a few minutes, then try again."
    if request.htmx:
        return render_template("servers/_busy.html", busy=text), 429
    return render_template("error.html", title="Too many attempts", text=text), 429


def _database_unwritable(error):
    """A locked or read-only database: say so (503), never a bare 500."""
    db.session().rollback()
    logging.getLogger("webapp").error("the database refused a request to %s: %s", request.path,
                                      str(error.orig).splitlines()[0] if error.orig else error)
    text = ("Mailroom cannot use its database right now (it is locked or read-only). Nothing was changed: "
            "try again in a moment, and tell the administrator if it persists.")
    return render_template("error.html", title="Try again in a moment", text=text), 503


def _server_address(server) -> str:
    """The protocol's own words for where it sends (host:port, a URL); "" for an unknown protocol."""
    transport = TRANSPORTS.get(server.protocol)
    try:
        return transport.settings_type.from_dict(server.settings).address if transport else ""
    except (TypeError, ValueError):
        return ""


def _credential_label(credential) -> str:
    return KIND_LABELS.get(credential.kind, credential.kind) if credential is not None else "None"


def _helpers():
    return {"server_address": _server_address, "credential_label": _credential_label,
            "oauth_redirect_uri": consent.redirect_uri, "oauth_host_warning": consent.host_warning}
