import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import login_required
from htmx_flask import make_response

from .. import audit, mailservers
from ..forms.sample import SampleForm
from ..forms.server import AUTH_LABELS, PROTOCOL_LABELS, ServerForm
from ..mail import transport_for
from ..mail.config import SECURITY_LABELS
from ..mail.message import sample_message
from ..mail.report import DeliveryError
from ..models import Role, utcnow
from ..security import load_portal
from .render import page_or_fragment

bp = Blueprint("servers", __name__, url_prefix="/p/<slug>/servers")
log = logging.getLogger(__name__)

STALE = ("This server was changed since you opened it. Your changes were not saved: "
         "open it again to see the current settings, then make your changes there.")


@bp.context_processor
def _labels():
    return {"labels": {"protocol": PROTOCOL_LABELS, "security": SECURITY_LABELS, "auth": AUTH_LABELS}}


@bp.get("/")
@login_required
def index(slug):
    portal = load_portal(slug)
    return render_template("servers/index.html", servers=mailservers.servers_of(portal))


@bp.route("/new", methods=["GET", "POST"])
@bp.route("/<int:server_id>/edit", methods=["GET", "POST"])
@login_required
def edit(slug, server_id=None):
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    form = _form(server)
    action = request.form.get("_action")
    if action in ("refresh", "default_port"):
        if action == "default_port":
            form.reset_port()
        else:
            form.follow_port_default()
        return _edit_page(form, server)
    if form.validate_on_submit():
        try:
            server = mailservers.save(portal, server or mailservers.draft(None, portal), form.version.data,
                                      form.settings(), form.new_password(), form.clears_password())
        except mailservers.StaleEdit:
            form.form_errors.append(STALE)
            return _edit_page(form, server, 409)
        flash(f"Saved “{server.label}”.")
        return redirect(url_for("servers.index", slug=slug), 303)
    return _edit_page(form, server, 422 if form.is_submitted() else 200)


@bp.post("/new/section/<name>")
@bp.post("/<int:server_id>/section/<name>")
@login_required
def section(slug, name, server_id=None):
    """Re-render one conditional section from the posted form, nothing validated or saved."""
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    if name not in ServerForm.SECTIONS and name != "connection":
        abort(404)
    form = _form(server)
    if request.form.get("_action") == "default_port":
        form.reset_port()
    elif request.htmx.trigger_name == "security":
        form.follow_port_default()
    return render_template(f"servers/_{name}.html", form=form, server=server), {"Vary": "HX-Request"}


@bp.post("/new/validate")
@bp.post("/<int:server_id>/validate")
@login_required
def validate(slug, server_id=None):
    """Check the settings in the form, saved or not, without sending mail."""
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    form = _form(server)
    if not form.validate_on_submit():
        if request.htmx:
            return make_response(render_template("servers/_form.html", form=form, server=server), 422,
                                 retarget="#server-form", reswap="outerHTML")
        return _edit_page(form, server, 422)
    draft = mailservers.draft(server, portal)
    mailservers.apply(draft, form.settings(), form.new_password(), form.clears_password())
    report = transport_for(draft.protocol).check(mailservers.config_for(draft))
    _log_check(portal, draft, report)
    if server and not form.new_password() and mailservers.snapshot(draft) == mailservers.snapshot(server):
        mailservers.remember_check(server, report)
    return page_or_fragment("servers/edit.html", "servers/_report.html", form=form, server=server, report=report)


@bp.post("/<int:server_id>/check")
@login_required
def check(slug, server_id):
    """Validate the saved settings from the list; the row keeps the result."""
    portal = load_portal(slug)
    server = _server_or_404(portal, server_id)
    report = transport_for(server.protocol).check(mailservers.config_for(server))
    _log_check(portal, server, report)
    mailservers.remember_check(server, report)
    return _list(portal, checked=server, report=report)


@bp.post("/<int:server_id>/toggle")
@login_required
def toggle(slug, server_id):
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    mailservers.set_enabled(portal, server, not server.enabled)
    return _list(portal)


@bp.post("/<int:server_id>/move/<any(up, down):direction>")
@login_required
def move(slug, server_id, direction):
    portal = load_portal(slug, Role.ADMIN)
    mailservers.move(portal, _server_or_404(portal, server_id), -1 if direction == "up" else 1)
    return _list(portal)


@bp.route("/<int:server_id>/remove", methods=["GET", "POST"])
@login_required
def remove(slug, server_id):
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    if request.method == "POST":
        mailservers.remove(portal, server)
        flash(f"Removed “{server.label}”.")
        return redirect(url_for("servers.index", slug=slug), 303)
    return render_template("servers/remove.html", server=server)


@bp.route("/<int:server_id>/sample", methods=["GET", "POST"])
@login_required
def sample(slug, server_id):
    """Send a sample mail through the saved settings, at once."""
    portal = load_portal(slug)
    server = _server_or_404(portal, server_id)
    form = SampleForm()
    if not form.validate_on_submit():
        status = 422 if form.is_submitted() else 200
        return page_or_fragment("servers/sample.html", "servers/_sample_form.html", status, form=form, server=server)
    message = sample_message(mailservers.config_for(server).sender, form.recipient.data, portal.name, server.label,
                             utcnow())
    receipt = error = None
    try:
        receipt = transport_for(server.protocol).send(mailservers.config_for(server), message)
    except DeliveryError as failure:
        error = failure
    log.info("sample mail portal=%s server=%s to=%s: %s", portal.slug, server.id, form.recipient.data,
             receipt.reply if receipt else error)
    audit.record("server.sample_sent" if receipt else "server.sample_failed", f"“{server.label}”",
                 {"recipient": [None, form.recipient.data]}, portal.id)
    mailservers.remember_check(server, (receipt or error).report)
    return page_or_fragment("servers/sample.html", "servers/_sample_form.html", form=form, server=server,
                            receipt=receipt, error=error)


def _log_check(portal, server, report) -> None:
    failure = report.failure
    log.info("validate portal=%s server=%s host=%s:%s: %s", portal.slug, server.id or "new", server.host, server.port,
             f"failed at {failure.name}: {failure.summary}" if failure else "all checks passed")


def _server_or_404(portal, server_id):
    if server_id is None:
        return None
    server = mailservers.get_server(portal, server_id)
    if server is None:
        abort(404)
    return server


def _form(server) -> ServerForm:
    if request.method == "POST":
        form = ServerForm()
    elif server is None:
        form = ServerForm()
    else:
        form = ServerForm(obj=server, requires_auth=server.auth_type == "basic")
    form.has_stored_password = bool(server and server.password_secret)
    return form


def _edit_page(form, server, status=200):
    return render_template("servers/edit.html", form=form, server=server), status


def _list(portal, **context):
    servers = mailservers.servers_of(portal)
    return page_or_fragment("servers/index.html", "servers/_list.html", servers=servers, **context)
