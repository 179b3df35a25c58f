from urllib.parse import urlencode

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from markupsafe import escape
from flask_login import current_user, login_required

from .. import audit, db, lists, network, people, senders
from .. import history as history_of
from ..forms.egress import EgressForm
from ..forms.fields import describe, field_labels, new_value_of
from ..forms.lists import HistoryFilterForm, ListSearchForm
from ..forms.portal import MailSenderForm, MemberForm, PortalForm, PortalSettingsForm, RoleForm, SenderIdForm
from ..history import HistoryFilter
from ..pagination import size_of
from ..models import Role, User
from ..security import current_actor, load_portal, require_superadmin
from .render import page_or_fragment

bp = Blueprint("portals", __name__)
ROLE_LABELS = {Role.ADMIN: "Admin", Role.STAFF: "Staff"}


@bp.get("/")
@login_required
def index():
    """A page of the portals the user may open, by name; a search by name or slug."""
    form = ListSearchForm(request.args, "Name or slug")
    user = current_user._get_current_object()
    listing = (people.portals_page(user, form.text, form.page_size, request.args.get("page"))
               if form.validate() else None)
    return page_or_fragment("portals/index.html", "portals/_list.html", 200 if listing is not None else 422,
                            form=form, listing=listing, base=url_for("portals.index"),
                            links=lists.page_links("portals.index", listing, form.query_args()),
                            total=people.portals_total(user),
                            found=people.portals_total(user, form.text) if form.text else None)


@bp.route("/portals/new", methods=["GET", "POST"])
@login_required
def new():
    require_superadmin()
    form = PortalForm()
    if form.validate_on_submit():
        try:
            portal = people.create_portal(current_actor(), form.slug.data, form.name.data, form.base_url.data)
        except people.Conflict as error:
            form.slug.errors.append(str(error))
        else:
            flash(f"Created the portal {portal.name}. Add its mail servers and members.")
            return redirect(url_for("servers.index", slug=portal.slug), 303)
    return render_template("portals/new.html", form=form), 422 if form.is_submitted() else 200


@bp.get("/p/<slug>/")
@login_required
def home(slug):
    """A portal's own address leads to its mail servers."""
    portal = load_portal(slug)
    return redirect(url_for("servers.index", slug=portal.slug))


@bp.route("/p/<slug>/settings", methods=["GET", "POST"])
@login_required
def settings(slug):
    portal = load_portal(slug, Role.ADMIN)
    form = PortalSettingsForm(obj=portal)
    if form.validate_on_submit():
        people.update_portal(current_actor(), portal, form.name.data, form.base_url.data, form.delivery_policy.data,
                             form.admin_address.data)
        flash("Saved the portal settings.")
        return redirect(url_for("portals.settings", slug=slug), 303)
    egress = EgressForm(formdata=None, data={"allow": portal.egress_allow, "deny": portal.egress_deny})
    return _settings_page(form, egress, 422 if form.is_submitted() else 200)


@bp.post("/p/<slug>/egress")
@login_required
def egress(slug):
    """The portal's egress lists: super-admins only (portal admins see them on the settings page)."""
    portal = load_portal(slug, Role.ADMIN)
    require_superadmin()
    form = EgressForm()
    if form.validate_on_submit():
        network.set_portal_rules(current_actor(), portal, form.allow.data, form.deny.data)
        flash("Saved the portal's egress policy.")
        return redirect(url_for("portals.settings", slug=slug), 303)
    return _settings_page(PortalSettingsForm(formdata=None, obj=portal), form, 422)


@bp.post("/p/<slug>/egress/allow")
@login_required
def allow_destination(slug):
    """From a refused Validate or sample mail (`again`: "sample"): a super-admin allows exactly the
    destinations it names (`rule`, one or more) for this portal."""
    portal = load_portal(slug, Role.ADMIN)
    require_superadmin()
    rules = [rule.strip() for rule in request.form.getlist("rule")] or [""]
    try:
        network.set_portal_rules(current_actor(), portal, "\n".join([*portal.egress_allow.splitlines(), *rules]),
                                 portal.egress_deny)
    except network.RulesInvalid:
        abort(400)
    named = f"{', '.join(rules[:-1])} and {rules[-1]}" if len(rules) > 1 else rules[0]
    again = "Send the sample mail again." if request.form.get("again") == "sample" else "Run Validate again."
    done = f"This portal may now connect to {named}. {again}"
    if request.htmx:  # in place: the form being filled in stays as it is
        return f'<p class="ok" role="status">{escape(done)}</p>'
    flash(done)
    return redirect(url_for("portals.settings", slug=slug) + "#egress", 303)


def _settings_page(form, egress_form, status, sender_form=None):
    portal = g.portal
    listing = senders.page_of(portal, size_of(request.args.get("size", 25)), request.args.get("page"))
    links = {"next": listing.next and url_for("portals.settings", slug=portal.slug, page=listing.next) + "#senders",
             "previous": listing.previous and url_for("portals.settings", slug=portal.slug,
                                                      page=listing.previous) + "#senders"}
    return render_template("portals/settings.html", form=form, egress=egress_form, sender_ids=listing,
                           sender_links=links, sender_form=sender_form or SenderIdForm(formdata=None),
                           sender_limit=senders.MAX_PER_PORTAL), status


@bp.post("/p/<slug>/sender-ids")
@login_required
def add_sender_id(slug):
    portal = load_portal(slug, Role.ADMIN)
    form = SenderIdForm()
    if form.validate_on_submit():
        try:
            sender = senders.add(current_actor(), portal, form.address.data)
        except senders.Refused as refused:
            form.address.errors.append(str(refused))
        else:
            flash(f"Added the sender ID {sender.address}. Assign it to members on the Members page.")
            return redirect(url_for("portals.settings", slug=slug) + "#senders", 303)
    egress = EgressForm(formdata=None, data={"allow": portal.egress_allow, "deny": portal.egress_deny})
    return _settings_page(PortalSettingsForm(formdata=None, obj=portal), egress, 422, form)


@bp.post("/p/<slug>/sender-ids/<id:sender_id>/remove")
@login_required
def remove_sender_id(slug, sender_id):
    portal = load_portal(slug, Role.ADMIN)
    sender = senders.get(portal, sender_id)
    if sender is None:
        abort(404)
    address = sender.address
    unassigned = senders.remove(current_actor(), portal, sender)
    flash(f"Removed the sender ID {address}." + (f" {unassigned} member(s) who had it send with the server's From "
                                                  "address again." if unassigned else ""))
    return redirect(url_for("portals.settings", slug=slug) + "#senders", 303)


@bp.route("/p/<slug>/members", methods=["GET", "POST"])
@login_required
def members(slug):
    portal = load_portal(slug, Role.ADMIN)
    form = MemberForm().offer(senders.all_of(portal))
    if form.validate_on_submit():
        user = people.find_user(form.email.data)
        if user is None:
            form.email.errors.append("No user has this email. A super-admin creates users under Users.")
        else:
            sender = senders.get(portal, int(form.sender.data)) if form.sender.data else None
            try:
                membership = people.add_member(current_actor(), portal, user, Role(form.role.data))
            except people.Conflict as error:
                form.email.errors.append(str(error))
            else:
                if sender is not None:
                    senders.assign(current_actor(), portal, membership, sender)
                flash(f"Added {user.email} as {form.role.data}"
                      + (f", mail on their behalf from {sender.address}." if sender else "."))
                return redirect(url_for("portals.members", slug=slug), 303)
    status = 422 if form.is_submitted() else 200
    search = _member_search()
    listing = (people.members_page(portal, search.text, search.page_size, request.args.get("page"))
               if search.validate() else None)
    if listing is None:
        status = 422
    context = dict(listing=listing, links=lists.page_links("portals.members", listing, search.query_args(), slug=slug),
                   **_members_context(portal, search))
    if request.method == "GET" and request.htmx and not request.htmx.history_restore_request:
        return render_template("portals/_members.html", **context), status  # a search, another page
    return render_template("portals/members.html", form=form, **context), status


@bp.post("/p/<slug>/members/<id:membership_id>/sender")
@login_required
def change_sender(slug, membership_id):
    """A row action like the role's: the member's Mail sender (a sender ID, or "" for the server's From).
    The row's select is named sender-<id> so that every row can post the page's one form."""
    portal = load_portal(slug, Role.ADMIN)
    membership = _membership_or_404(portal, membership_id)
    chosen = request.form.get(f"sender-{membership_id}", request.form.get("sender", ""))
    offered = {str(s.id): s for s in senders.all_of(portal)}
    if chosen and chosen not in offered:
        said, status, errors = "Choose a sender ID of this portal.", 422, {membership_id: ["Not a sender ID of this portal."]}
    else:
        sender = offered.get(chosen)
        senders.assign(current_actor(), portal, membership, sender)
        user = db.session().get(User, membership.user_id)
        said, status, errors = (f"Mail on behalf of {user.email} now goes from "
                                f"{sender.address if sender else senders.DEFAULT}."), 200, {}
    if request.htmx:
        row = people.member_row(portal, membership_id)
        return render_template("portals/_member_row.html", m=row, oob=True, said=said,
                               **_members_context(portal, _member_search(), errors)), status
    search = _member_search()
    if errors:  # without JavaScript: the page again, the error beside the row
        listing = people.members_page(portal, search.text, search.page_size, request.args.get("page")) \
            if search.validate() else None
        return render_template("portals/members.html", form=MemberForm(formdata=None).offer(senders.all_of(portal)),
                               listing=listing, links=lists.page_links("portals.members", listing, search.query_args(),
                                                                       slug=slug),
                               **_members_context(portal, search, errors)), status
    flash(said)
    search.validate()
    return redirect(url_for("portals.members", slug=slug, **lists.where_we_are(search)), 303)


@bp.post("/p/<slug>/members/<id:membership_id>/role")
@login_required
def change_role(slug, membership_id):
    """A row action: to htmx the member's row (the counts and the outcome out of band), else back to
    the same page of the list."""
    portal = load_portal(slug, Role.ADMIN)
    _membership_or_404(portal, membership_id)
    form = RoleForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        people.change_role(current_actor(), portal, membership_id, Role(form.role.data))
    except people.Conflict as error:
        said, status = str(error), 409
    else:
        said, status = "Changed the role.", 200
    if request.htmx:
        row = people.member_row(portal, membership_id)
        if row is None:
            return "", 200
        return render_template("portals/_member_row.html", m=row, oob=True, said=said,
                               **_members_context(portal, _member_search())), status
    flash(said)
    search = _member_search()
    search.validate()
    return redirect(url_for("portals.members", slug=slug, **lists.where_we_are(search)), 303)


def _member_search() -> ListSearchForm:
    return ListSearchForm(request.args, "Email")


def _members_context(portal, search: ListSearchForm, sender_errors: dict | None = None) -> dict:
    """What the list and each row need, built once per page."""
    args = lists.where_we_are(search)
    base = url_for("portals.members", slug=portal.slug)
    return {"search": search, "base": f"{base}/", "list_url": base, "back": f"?{urlencode(args)}" if args else "",
            "role_labels": ROLE_LABELS, "sender_choices": MailSenderForm.choices_for(senders.all_of(portal)),
            "sender_errors": sender_errors or {},
            "counts": {"members": people.members_total(portal), "admins": people.members_total(portal, role=Role.ADMIN),
                       "found": people.members_total(portal, search.text) if search.text else None}}


@bp.route("/p/<slug>/members/<id:membership_id>/remove", methods=["GET", "POST"])
@login_required
def remove_member(slug, membership_id):
    portal = load_portal(slug, Role.ADMIN)
    membership = _membership_or_404(portal, membership_id)
    if request.method == "GET":
        user = db.session().get(User, membership.user_id)
        return render_template("portals/remove_member.html", membership=membership, user=user)
    try:
        people.remove_member(current_actor(), portal, membership_id)
    except people.Conflict as error:
        flash(str(error))
    else:
        flash("Removed the member.")
    return redirect(url_for("portals.members", slug=slug), 303)


@bp.get("/p/<slug>/history")
@login_required
def history(slug):
    """A page of the portal's History, newest first, back to its first event; filtered by time, who
    and words in what changed."""
    portal = load_portal(slug, Role.STAFF)
    form = HistoryFilterForm(request.args)
    listing = None
    if form.validate():
        chosen = HistoryFilter(since=form.since_utc, until=form.until_utc, actor=form.who,
                               text=form.text)
        listing = history_of.page_of(portal, chosen, form.page_size, request.args.get("page"))
        labelled = []
        for event in listing.rows:
            protocol, auth_type = new_value_of(event.changes, "protocol"), new_value_of(event.changes, "auth_type")
            labelled.append((event, field_labels(protocol, auth_type, event.action), protocol))
        listing.rows = labelled
    return page_or_fragment("portals/history.html", "portals/_history.html", 200 if listing is not None else 422,
                            form=form, listing=listing, base=url_for("portals.history", slug=slug),
                            links=lists.page_links("portals.history", listing, form.query_args(), slug=slug),
                            total=history_of.total(portal), actions=audit.ACTIONS, describe=describe)


def _membership_or_404(portal, membership_id):
    membership = people.get_membership(portal, membership_id)
    if membership is None:
        abort(404)
    return membership


@bp.app_context_processor
def _portal_context():
    return {"portal": g.get("portal"), "role": g.get("role")}
