"""OAuth 2.0 consent: Authorize, admin consent, consent links, discovery, and the one callback.

Leaving for the provider is never a form's redirect: browsers check a page's CSP form-action on
every redirect of a form submission, so a 303 to the provider is blocked (silently) for an
http://localhost endpoint, or for a provider that sends the browser on to another host
(federated sign-in). The POST (CSRF-checked; it starts the consent) answers htmx with
HX-Redirect (htmx sets window.location: a plain navigation), and a browser without JavaScript
with a page that links to the provider.
"""
from urllib.parse import urlsplit

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from htmx_flask import make_response
from werkzeug.datastructures import CombinedMultiDict

from .. import consent, db, mailservers, network
from ..forms.server import ServerForm
from ..slots import Busy, slots
from ..mail import oauth
from ..mail.deadline import Deadline, DeadlineExceeded
from ..mail.egress import REFUSED_HINT, EgressRefused, egress_details
from ..mail.report import Outcome, Report, Step
from ..models import Role
from ..security import current_actor, load_portal
from .render import page_or_fragment

bp = Blueprint("oauth", __name__)
bp.app_template_global("oauth_next_step")(consent.next_step)
DISCOVER_SECONDS = 10


@bp.post("/p/<slug>/servers/<id:server_id>/oauth/authorize")
@login_required
def authorize(slug, server_id):
    """Send the admin's browser to the provider's consent (then back to the callback)."""
    portal, server = _saved_server(slug, server_id)
    return _to_provider(lambda: consent.start(portal, server, "consent", current_user.email), server)


@bp.post("/p/<slug>/servers/<id:server_id>/oauth/admin-consent")
@login_required
def admin_consent(slug, server_id):
    """Microsoft's admin consent for app-only access: a tenant administrator approves."""
    portal, server = _saved_server(slug, server_id)
    return _to_provider(lambda: consent.start(portal, server, "admin_consent", current_user.email), server)


@bp.post("/p/<slug>/servers/<id:server_id>/oauth/link")
@login_required
def make_link(slug, server_id):
    """A consent link for the mailbox owner, shown once to copy."""
    portal, server = _saved_server(slug, server_id)
    try:
        link = consent.make_link(current_actor(), portal, server)
    except consent.ConsentError as error:
        return page_or_fragment("oauth/result.html", "oauth/_link.html", error.status, error=error, server=server)
    return page_or_fragment("oauth/result.html", "oauth/_link.html", link=link, server=server,
                            days=consent.LINK_DAYS)


@bp.post("/p/<slug>/servers/new/oauth/discover")
@bp.post("/p/<slug>/servers/<id:server_id>/oauth/discover")
@login_required
def discover(slug, server_id=None):
    """Fill in the endpoints from the issuer's metadata (the form's values; nothing is saved), and
    say what was found. To htmx the credentials part (with an egress refusal's "Allow" out of
    band in the report area, outside the form); without JavaScript the whole page."""
    portal = load_portal(slug, Role.ADMIN)
    server = mailservers.get_server(portal, server_id) if server_id else None
    if server_id and server is None:
        abort(404)
    posted = CombinedMultiDict([request.files, request.form]) if request.files else request.form
    form = ServerForm(posted, only="credentials" if request.htmx else None,
                      stored_secret=bool(server and server.credential and server.credential.secret))
    if "issuer" not in form:
        abort(400)
    discovered, refusal = "", None
    try:
        with slots().hold(portal.id, server.id if server else None, server.max_connections if server else 0):
            db.release()
            metadata = oauth.discover(form["issuer"].data or "", network.for_portal(portal),
                                      Deadline(DISCOVER_SECONDS))
        form.fill_endpoints(metadata)
        discovered = _found(metadata)
    except Busy as busy:
        form["issuer"].errors = [str(busy)]
    except oauth.OAuthFailure as failure:
        form["issuer"].errors = [f"{failure.summary}: {failure.description}. {failure.hint}".replace(": .", ".")]
    except EgressRefused as refused:
        form["issuer"].errors = [f"{refused}."]
        refusal = Report(steps=[Step("Discover", Outcome.FAILED, str(refused), hint=REFUSED_HINT,
                                     details=egress_details(refused))])
    except DeadlineExceeded:
        form["issuer"].errors = [f"The issuer did not answer within {DISCOVER_SECONDS} seconds: check the issuer URL."]
    context = {"form": form, "server": server, "discovered": discovered, "discover_refusal": refusal}
    if not request.htmx:
        return render_template("servers/edit.html", **context), 200 if discovered else 422
    fragment = render_template("servers/_credentials.html", **context)
    if refusal is not None:
        fragment += render_template("servers/_discover_refused.html", oob=True, **context)
    return fragment


def _found(metadata: dict) -> str:
    """What Discover found, in words (the fields it filled, and what the admin may want to know)."""
    filled = [f"{what} ({metadata[name]})" for what, name in (("the authorization URL", "authorization_endpoint"),
                                                             ("the token URL", "token_endpoint")) if metadata.get(name)]
    words = f"Found the metadata of {metadata.get('issuer')}: filled in {' and '.join(filled)}."
    if not metadata.get("authorization_endpoint"):
        words += " It names no authorization endpoint: the delegated flow needs one, type it."
    if metadata.get("authorization_response_iss_parameter_supported") is True:
        words += " Its sign-in answers name it (RFC 9207 iss): Mailroom refuses an answer that does not."
    scopes = metadata.get("scopes_supported")
    if isinstance(scopes, list) and scopes:
        shown = ", ".join(str(scope) for scope in scopes[:20]) + (", …" if len(scopes) > 20 else "")
        words += f" Scopes it offers: {shown}."
    return words


# A consent link carries its token in the query (/oauth/consent?link=...), which the access log
# leaves out (the Makefile logs the path, %(U)s); the button posts it in the form. Links made
# before, with the token in the path, work until they expire (consent.LINK_DAYS).
@bp.get("/oauth/consent")
@bp.get("/oauth/consent/<token>")
def link(token=None):
    """The mailbox owner's page: who asks, for which mailbox, and a button to the provider."""
    token = token or request.args.get("link", "")
    try:
        _link, server, portal = consent.open_link(token)
    except consent.ConsentError as error:
        return render_template("oauth/result.html", error=error), error.status
    return render_template("oauth/link.html", server=server, target_portal=portal, token=token)


@bp.post("/oauth/consent")
@bp.post("/oauth/consent/<token>")
def follow_link(token=None):
    token = token or request.form.get("link", "")
    try:
        record, server, portal = consent.open_link(token)
    except consent.ConsentError as error:
        return _problem(error)
    return _to_provider(lambda: consent.start(portal, server, "consent", "the mailbox owner (consent link)",
                                              record.id), server)


@bp.get("/oauth/callback")
def callback():
    """Where every provider sends the browser back (the redirect URI). Once the answer is handled,
    the browser goes on (303) to the server's page, or for a consent link to the result page: the
    code and the state do not stay in the address bar or the history."""
    try:
        outcome = consent.callback(request.args)
    except consent.ConsentError as error:
        outcome = consent.Outcome.refused(error)
    consent.keep_outcome(outcome)
    if outcome.from_server_page and outcome.server is not None:
        target = url_for("servers.edit", slug=outcome.portal.slug, server_id=outcome.server.id,
                         _anchor="oauth-status")
    else:
        target = url_for("oauth.result")
    response = redirect(target, 303)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/oauth/result")
def result():
    """The outcome of the last consent in this browser (a consent link's, or a refused answer's)."""
    outcome = consent.kept_outcome()
    if outcome is None:
        return render_template("oauth/result.html", outcome=None), 404
    return render_template("oauth/result.html", outcome=outcome), 200 if outcome["ok"] else 400


def _saved_server(slug, server_id):
    portal = load_portal(slug, Role.ADMIN)
    server = mailservers.get_server(portal, server_id)
    if server is None:
        abort(404)
    return portal, server


def _to_provider(start, server):
    """Start the consent and leave for the provider by a plain navigation (see the module's doc)."""
    try:
        url = start()
    except consent.ConsentError as error:
        return _problem(error, server)
    if request.htmx:
        return make_response("", 200, redirect=url)
    return render_template("oauth/continue.html", url=url, host=urlsplit(url).netloc, server=server)


def _problem(error: consent.ConsentError, server=None):
    """Why the consent cannot start: to htmx in the page's message area (whatever the status,
    static/app.js swaps an answer that names its target), else as a page."""
    if request.htmx:
        response = make_response(render_template("oauth/_problem.html", error=error), error.status,
                                 retarget="#messages")
        response.headers["HX-Reswap"] = "innerHTML show:top"
        return response
    return render_template("oauth/result.html", error=error, server=server), error.status
