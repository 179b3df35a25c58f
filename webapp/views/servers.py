from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import login_required
from htmx_flask import make_response

from types import SimpleNamespace
from urllib.parse import urlencode

from flask import current_app
from werkzeug.datastructures import CombinedMultiDict, MultiDict

from .. import checks, consent, db, lists, mailservers, network, server_list
from ..forms.lists import ListSearchForm
from ..credentials import SecretNeeded, SecretUnreadable
from ..limits import current_user_key, limiter
from ..slots import Busy, slots
from ..forms.options import edit_rows
from ..forms.sample import SampleForm
from ..forms.server import PARTIALS, ServerForm
from ..forms.smime import smime_values
from ..addresses import normalize_address
from ..mail import discover_settings, presets
from ..mail.arrival import valid_message_id
from ..mail.auth import AUTH_LABELS
from ..mail.deadline import Deadline
from ..mail.egress import REFUSED_HINT, egress_details
from ..mail.report import Outcome, Report, Step, StepFailed
from ..mail.smtp import SECURITY_LABELS
from ..mail.transport import TRANSPORTS
from ..models import Role
from ..security import current_actor, load_portal
from .render import page_or_fragment

bp = Blueprint("servers", __name__, url_prefix="/p/<slug>/servers")
bp.app_template_global("preset_groups")(presets.groups)

NEXT_STEPS = {"authorize": "authorize Mailroom at the provider (Authorize), or send the mailbox owner a consent "
                            "link.",
              "reauthorize": "re-authorize Mailroom at the provider (Re-authorize).",
              "admin_consent": "a tenant administrator grants admin consent (Grant admin consent)."}
STALE = ("This server was changed since you opened it. Your changes were not saved: "
         "open it again to see the current settings, then make your changes there.")


@bp.context_processor
def _labels():
    return {"labels": {"protocol": {p: t.label for p, t in TRANSPORTS.items()}, "security": SECURITY_LABELS,
                       "auth": AUTH_LABELS}}


@bp.get("/")
@login_required
def index(slug):
    portal = load_portal(slug)
    return _list(portal)


@bp.route("/new", methods=["GET", "POST"])
@bp.route("/<id:server_id>/edit", methods=["GET", "POST"])
@login_required
def edit(slug, server_id=None):
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    form = _form(server)
    action = request.form.get("_action")
    if action == "preset" and request.method == "POST":
        return _apply_preset(server)
    if action == "find_settings" and request.method == "POST":
        return _find_settings(portal, server)
    if edit_rows(form, action):  # a custom header row added or removed (without htmx): the form again, unsaved
        return _edit_page(form, server)
    if action in ("refresh", "default_port", "default_scope"):  # the form again for these choices, unsaved
        form.reset_port() if action == "default_port" else form.follow_port_default()
        trigger = request.htmx.trigger_name if request.htmx else None
        form.reset_scope() if action == "default_scope" else form.follow_oauth_defaults(trigger)
        return _edit_page(form, server)
    if request.method == "GET":
        return _edit_page(form, server)
    if form.validate():
        columns, settings, credential = form.values()
        try:
            server = mailservers.save(current_actor(), portal, server, request.form.get("version"), columns,
                                      settings, credential, form.side_passwords(), smime_values(form))
        except mailservers.StaleEdit:
            form.form_errors.append(STALE)
            return _edit_page(form, server, 409)
        except SecretNeeded as needed:
            form.refuse_secret(str(needed), needed.field)
        else:
            step = consent.next_step(server)  # an OAuth server that waits for a consent: that comes next
            flash(f"Saved “{server.label}”." + (f" Next: {NEXT_STEPS[step]}" if step else ""))
            target = (url_for("servers.edit", slug=slug, server_id=server.id, _anchor="oauth-status") if step
                      else url_for("servers.index", slug=slug))
            if request.htmx:  # the form was posted by htmx: the browser goes there itself
                return make_response("", 204, redirect=target)
            return redirect(target, 303)
    return _edit_page(form, server, 422)


@bp.post("/new/section/<name>")
@bp.post("/<id:server_id>/section/<name>")
@login_required
def section(slug, name, server_id=None):
    """Re-render one swappable part of the form from the posted values; nothing is validated or saved."""
    portal = load_portal(slug, Role.ADMIN)
    if name not in PARTIALS:
        abort(400)
    if name in ("tls", "endpoints"):  # these show nothing of the stored server but its id
        if server_id is not None and not mailservers.server_exists(portal, server_id):
            abort(404)
        server = SimpleNamespace(id=server_id, credential=None) if server_id is not None else None
    else:
        server = _server_or_404(portal, server_id)
    form = _form(server, only=name)
    if not form.choices.known_protocol or not form.can_render(name):
        abort(400)  # e.g. the endpoints of an OAuth part that the posted authentication does not show
    trigger = request.htmx.trigger_name
    if edit_rows(form, request.form.get("_action", "")):
        pass
    elif request.form.get("_action") == "default_port":
        form.reset_port()
    elif request.form.get("_action") == "default_scope":
        form.reset_scope()
    elif trigger == "security":
        form.follow_port_default()
    else:
        form.follow_oauth_defaults(trigger)
    if name == "tls":  # the port always; the TLS options only when what shows of them changes
        shown_before = set(request.form.getlist("_shown")) & {"tls", "plaintext"}
        options_change = shown_before != {s for s in ("tls", "plaintext") if form.shows(s)}
        return render_template("servers/_port.html", form=form, server=server) + (
            render_template("servers/_tls_options.html", form=form, server=server, oob=True) if options_change else "")
    return render_template(f"servers/_{name}.html", form=form, server=server, partial=name)


@bp.post("/new/validate")
@bp.post("/<id:server_id>/validate")
@login_required
def validate(slug, server_id=None):
    """Check the settings in the form, saved or not, without sending mail."""
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    form = _form(server)
    if form.validate():
        columns, settings, credential = form.values()
        try:
            report = checks.check_draft(current_actor(), portal, server, columns, settings, credential,
                                        form.side_passwords())
        except SecretNeeded as needed:
            form.refuse_secret(str(needed), needed.field)
        except Busy as busy:
            return _busy(busy, "servers/edit.html", form=form, server=server)
        else:
            return page_or_fragment("servers/edit.html", "servers/_report.html", form=form, server=server,
                                    report=report)
    if request.htmx:  # the form with its errors, and the report area saying why nothing ran
        return make_response(render_template("servers/_invalid.html", form=form, server=server), 422,
                             retarget="#server-form", reswap="outerHTML")
    return _edit_page(form, server, 422, invalid=True)


@bp.post("/<id:server_id>/check")
@login_required
def check(slug, server_id):
    """Validate the saved settings from the list; the row keeps the result. To htmx the row with the
    report under it; without JavaScript the same page of the list with the report."""
    portal = load_portal(slug)
    server = _server_or_404(portal, server_id)
    try:
        report = checks.check(current_actor(), portal, server)
    except Busy as busy:
        if request.htmx:
            return _row(portal, server_id, busy=str(busy), status=429)
        return _list(portal, busy=str(busy), status=429)
    if request.htmx:
        return _row(portal, server_id, report=report)
    return _list(portal, checked_id=server_id, report=report)


@bp.post("/<id:server_id>/toggle")
@login_required
def toggle(slug, server_id):
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    enabling = not server.enabled
    mailservers.set_enabled(current_actor(), portal, server, enabling)
    if request.htmx:
        return _row(portal, server_id)
    flash(f"{'Enabled' if enabling else 'Disabled'} “{server.label}”.")
    return _back_to_list(slug)


@bp.post("/<id:server_id>/move/<any(up, down):direction>")
@login_required
def move(slug, server_id, direction):
    """Two rows change places: to htmx this page of the list again, else back to it."""
    portal = load_portal(slug, Role.ADMIN)
    mailservers.move(current_actor(), portal, _server_or_404(portal, server_id), -1 if direction == "up" else 1)
    if request.htmx:
        return _list(portal)
    return _back_to_list(slug)


@bp.route("/<id:server_id>/remove", methods=["GET", "POST"])
@login_required
def remove(slug, server_id):
    portal = load_portal(slug, Role.ADMIN)
    server = _server_or_404(portal, server_id)
    if request.method == "POST":
        mailservers.remove(current_actor(), portal, server)
        flash(f"Removed “{server.label}”.")
        return redirect(url_for("servers.index", slug=slug), 303)
    return render_template("servers/remove.html", server=server)


@bp.route("/<id:server_id>/sample", methods=["GET", "POST"])
@login_required
@limiter.limit(lambda: current_app.config["SAMPLE_LIMIT_PER_USER"], key_func=current_user_key, methods=["POST"])
def sample(slug, server_id):
    """Send a sample mail through the saved settings, at once."""
    portal = load_portal(slug)
    server = _server_or_404(portal, server_id)
    form = SampleForm()
    if not form.validate_on_submit():
        status = 422 if form.is_submitted() else 200
        return page_or_fragment("servers/sample.html", "servers/_sample_form.html", status, form=form, server=server)
    try:
        result = checks.send_sample(current_actor(), portal, server, form.recipient.data)
    except Busy as busy:
        return page_or_fragment("servers/sample.html", "servers/_sample_form.html", 429, form=form, server=server,
                                busy=str(busy))
    return page_or_fragment("servers/sample.html", "servers/_sample_form.html", form=form, server=server,
                            result=result, reads_back=mailservers.reads_back(server))


@bp.post("/<id:server_id>/sample/arrival")
@login_required
@limiter.limit(lambda: current_app.config["SAMPLE_LIMIT_PER_USER"], key_func=current_user_key)
def arrival(slug, server_id):
    """Read how the sample mail arrived: its Authentication-Results in the mail receiver login's mailbox."""
    portal = load_portal(slug)
    server = _server_or_404(portal, server_id)
    message_id = request.form.get("message_id", "").strip()
    context = {"server": server, "message_id": message_id}
    status = 200
    if not valid_message_id(message_id):
        context["arrival_error"], status = "That is not the Message-ID of a sample mail.", 422
    else:
        try:
            context["arrival"] = checks.read_arrival(portal, server, message_id)
        except Busy as busy:
            context["arrival_error"], status = str(busy), 429
        except SecretUnreadable:
            context["arrival_error"] = "The mail receiver's password cannot be read with this instance's keys."
        except StepFailed as failed:
            context["arrival_error"], context["arrival_hint"] = f"The mailbox could not be read: {failed}", failed.hint
    if request.htmx:
        return render_template("servers/_arrival.html", **context), status
    return render_template("servers/sample.html", form=SampleForm(), **context), status


FIND_SECONDS = 15  # Find settings: the autoconfig fetches and the DNS lookups together


def _apply_preset(server):
    """Fill in what the chosen preset knows (nothing is saved); its note and link come along."""
    preset = presets.BY_KEY.get(request.form.get("preset", ""))
    if preset is None:  # "Choose a service": the form as it is
        return _edit_page(_form(server), server)
    values = preset.values(request.form.get("from_address", "").strip())
    form = _filled(server, values)
    return _edit_page(form, server, preset=preset, filled=_filled_fields(form, values, {}))


def _find_settings(portal, server):
    """Look for the From address's settings (autoconfig, SRV, MX) and fill in what was found."""
    form = _form(server)
    try:
        address = normalize_address(request.form.get("from_address", "").strip())
    except ValueError as error:
        form["from_address"].errors = [f"Type the From address first: Find settings looks at its domain ({error})."
                                       if request.form.get("from_address") else
                                       "Type the From address first: Find settings looks at its domain."]
        form["from_address"].render_kw = {"autofocus": True}
        return _edit_page(form, server, 422)
    try:
        with slots().hold(portal.id, server.id if server else None, server.max_connections if server else 0):
            db.release()
            found = discover_settings.find(address, checks.resolver(), network.for_portal(portal),
                                           Deadline(FIND_SECONDS))
    except Busy as busy:
        form["from_address"].errors = [str(busy)]
        return _edit_page(form, server, 429)
    form = _filled(server, found.values)
    context = {"found": found, "preset": found.preset, "filled": _filled_fields(form, found.values, found.sources)}
    if found.refused is not None:  # said in the report area, where a super-admin can allow it
        context["discover_refusal"] = Report(steps=[Step(
            "Autoconfig document", Outcome.WARNING, f"not fetched: {found.refused}", hint=REFUSED_HINT,
            details=egress_details(found.refused))])
        context["refusal_title"] = "Find settings could not fetch the domain's autoconfig document:"
    body, status = _edit_page(form, server, **context)
    if request.htmx and found.refused is not None:
        body += render_template("servers/_discover_refused.html", oob=True, form=form, server=server, **context)
    return body, status


def _filled(server, values: dict[str, str]) -> ServerForm:
    """The posted form with these values in place of the typed ones; OAuth endpoints, scope and a
    cloud's Graph address follow as if the protocol had been chosen."""
    posted = MultiDict(request.form)
    for name, value in values.items():
        posted.setlist(name, [value])
    form = ServerForm(posted, stored_secret=bool(server and server.credential and server.credential.secret))
    form.follow_oauth_defaults("protocol")
    return form


def _filled_fields(form: ServerForm, values: dict[str, str], sources: dict[str, str]) -> list[tuple[str, str, str]]:
    """(label, value as shown, where it came from) for each field filled in."""
    rows = []
    for name, value in values.items():
        if name not in form:
            continue
        field = form[name]
        shown = dict((str(v), str(label)) for v, label, *_ in field.iter_choices()).get(value, value) \
            if hasattr(field, "iter_choices") else value
        rows.append((str(field.label.text), shown, sources.get(name, "")))
    return rows


def _server_or_404(portal, server_id):
    if server_id is None:
        return None
    server = mailservers.get_server(portal, server_id)
    if server is None:
        abort(404)
    return server


def _form(server, only: str | None = None) -> ServerForm:
    stored_secret = bool(server and server.credential and server.credential.secret)
    if request.method == "POST":
        posted = CombinedMultiDict([request.files, request.form]) if request.files else request.form
        return ServerForm(posted, only=only, stored_secret=stored_secret)
    return ServerForm(saved=mailservers.saved_values(server) if server else None, stored_secret=stored_secret)


def _edit_page(form, server, status=200, **context):
    """The whole page; to htmx (a save with errors), the form alone, which takes the form's place.
    Coming back from a consent, the page shows how it ended (once)."""
    if server is not None and request.method == "GET":
        context.setdefault("oauth_outcome", consent.take_outcome(server.id))

    return page_or_fragment("servers/edit.html", "servers/_form.html", status, form=form, server=server, **context)


SEARCH_LABEL = "Description, host or From address"


def _search_form() -> ListSearchForm:
    """The list's search and page from the query string (a row action's URL carries the list's)."""
    return ListSearchForm(request.args, SEARCH_LABEL)


def _list_context(portal, form: ListSearchForm) -> dict:
    """What the list and each row need, built once per page: the base URL rows add their id to,
    the list's query (so a row action comes back to this page), the counts."""
    args = lists.where_we_are(form)
    return {"base": url_for("servers.index", slug=portal.slug), "back": f"?{urlencode(args)}" if args else "",
            "last_position": server_list.last_position(portal), "form": form,
            "counts": {"servers": server_list.total(portal), "enabled": server_list.total(portal, enabled=True),
                       "found": server_list.total(portal, form.text) if form.text else None}}


def _list(portal, status=200, **context):
    """The whole page, or to htmx (a search, another page, a move) the list alone."""
    form = _search_form()
    listing = (server_list.page_of(portal, form.text, form.page_size, request.args.get("page"))
               if form.validate() else None)
    if listing is None:
        status = 422
    links = lists.page_links("servers.index", listing, form.query_args(), slug=portal.slug)
    return page_or_fragment("servers/index.html", "servers/_list.html", status, listing=listing, links=links,
                            **_list_context(portal, form), **context)


def _row(portal, server_id: int, status=200, **context):
    """A row action's answer to htmx: the server's row (and a report under it), with the counts and the
    delivery banner out of band."""
    row = server_list.row_of(portal, server_id)
    if row is None:  # removed meanwhile: the row goes
        return "", 200
    return render_template("servers/_row.html", s=row, checked_id=server_id, oob=True,
                           **_list_context(portal, _search_form()), **context), status


def _back_to_list(slug):
    """Without JavaScript: back to the page of the list the action was taken on."""
    form = _search_form()
    form.validate()
    return redirect(url_for("servers.index", slug=slug, **lists.where_we_are(form)), 303)


def _busy(busy: Busy, page: str, **context):
    """Too many checks at once: said in the report area at once, never a wait."""
    return page_or_fragment(page, "servers/_busy.html", 429, busy=str(busy), **context)
