"""OAuth 2.0 consent: Authorize, admin consent, consent links, discovery, and the one callback."""
from flask import Blueprint, abort, redirect, render_template, request
from flask_login import current_user, login_required

from .. import consent, db, mailservers, network
from ..forms.server import ServerForm
from ..limits import Busy, slots
from ..mail import oauth
from ..mail.deadline import Deadline, DeadlineExceeded
from ..mail.egress import EgressRefused
from ..models import Role
from ..security import allow_form_target, current_actor, load_portal
from .render import page_or_fragment

bp = Blueprint("oauth", __name__)


@bp.post("/p/<slug>/servers/<id:server_id>/oauth/authorize")
@login_required
def authorize(slug, server_id):
    """Send the admin's browser to the provider's consent (then back to the callback)."""
    portal, server = _saved_server(slug, server_id)
    return _to_provider(lambda: consent.start(portal, server, "consent", current_user.email), portal, server)


@bp.post("/p/<slug>/servers/<id:server_id>/oauth/admin-consent")
@login_required
def admin_consent(slug, server_id):
    """Microsoft's admin consent for app-only access: a tenant administrator approves."""
    portal, server = _saved_server(slug, server_id)
    return _to_provider(lambda: consent.start(portal, server, "admin_consent", current_user.email), portal, server)


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
    """Fill in the endpoints from the issuer's metadata (the form's values; nothing is saved)."""
    portal = load_portal(slug, Role.ADMIN)
    server = mailservers.get_server(portal, server_id) if server_id else None
    if server_id and server is None:
        abort(404)
    form = ServerForm(request.form, only="credentials")
    if "issuer" not in form:
        abort(400)
    try:
        with slots().hold(portal.id, server.id if server else None, server.max_connections if server else 0):
            db.release()
            metadata = oauth.discover(form["issuer"].data or "", network.for_portal(portal), Deadline(10))
        form.fill_endpoints(metadata)
    except Busy as busy:
        form["issuer"].errors = [str(busy)]
    except oauth.OAuthFailure as failure:
        form["issuer"].errors = [f"{failure.summary}: {failure.description}. {failure.hint}".replace(": .", ".")]
    except EgressRefused as refused:
        form["issuer"].errors = [str(refused)]
    except DeadlineExceeded:
        form["issuer"].errors = ["The issuer did not answer within 10 seconds: check the issuer URL."]
    return render_template("servers/_credentials.html", form=form, server=server)


@bp.get("/oauth/consent/<token>")
def link(token):
    """The mailbox owner's page: who asks, for which mailbox, and a button to the provider."""
    try:
        _link, server, portal = consent.open_link(token)
    except consent.ConsentError as error:
        return render_template("oauth/result.html", error=error), error.status
    allow_form_target(server.credential.provider.get("authorize_url", ""))
    return render_template("oauth/link.html", server=server, target_portal=portal, token=token)


@bp.post("/oauth/consent/<token>")
def follow_link(token):
    try:
        record, server, portal = consent.open_link(token)
        return redirect(consent.start(portal, server, "consent", "the mailbox owner (consent link)", record.id), 303)
    except consent.ConsentError as error:
        return render_template("oauth/result.html", error=error), error.status


@bp.get("/oauth/callback")
def callback():
    """Where every provider sends the browser back (the redirect URI)."""
    try:
        outcome = consent.callback(request.args)
    except consent.ConsentError as error:
        response = render_template("oauth/result.html", error=error), error.status
    else:
        response = render_template("oauth/result.html", outcome=outcome), 200 if outcome.ok else 400
    return response[0], response[1], {"Referrer-Policy": "no-referrer"}


def _saved_server(slug, server_id):
    portal = load_portal(slug, Role.ADMIN)
    server = mailservers.get_server(portal, server_id)
    if server is None:
        abort(404)
    return portal, server


def _to_provider(start, portal, server):
    try:
        return redirect(start(), 303)
    except consent.ConsentError as error:
        return render_template("oauth/result.html", error=error, server=server), error.status
