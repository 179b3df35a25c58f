from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from markupsafe import escape
from flask_login import current_user, login_required
from sqlmodel import select

from .. import audit, db, network, people, senders
from ..forms.egress import EgressForm
from ..forms.fields import describe, field_labels, new_value_of
from ..forms.portal import MailSenderForm, MemberForm, PortalForm, PortalSettingsForm, RoleForm, SenderIdForm
from ..pagination import size_of
from ..models import AuditEvent, Membership, Portal, Role, User
from ..security import current_actor, load_portal, require_superadmin

bp = Blueprint("portals", __name__)


@bp.get("/")
@login_required
def index():
    query = select(Portal).order_by(Portal.name)
    if not current_user.is_superadmin:
        query = query.join(Membership).where(Membership.user_id == current_user.id)
    return render_template("portals/index.html", portals=db.session().exec(query).all())


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
    """From a refused Validate: a super-admin allows exactly that destination for this portal."""
    portal = load_portal(slug, Role.ADMIN)
    require_superadmin()
    rule = (request.form.get("rule") or "").strip()
    try:
        network.set_portal_rules(current_actor(), portal, "\n".join([*portal.egress_allow.splitlines(), rule]),
                                 portal.egress_deny)
    except network.RulesInvalid:
        abort(400)
    done = f"This portal may now connect to {rule}. Run Validate again."
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
    return _members_page(portal, form, status)


def _members_page(portal, form, status, sender_errors=None):
    sender_ids = senders.all_of(portal)

    def sender_form(membership):
        chosen = "" if membership.sender_id is None else str(membership.sender_id)
        return MailSenderForm(formdata=None, data={"sender": chosen}).offer(sender_ids)

    return render_template("portals/members.html", form=form, members=people.members_of(portal),
                           role_form=RoleForm, sender_form=sender_form, sender_errors=sender_errors or {}), status


@bp.post("/p/<slug>/members/<id:membership_id>/sender")
@login_required
def change_sender(slug, membership_id):
    portal = load_portal(slug, Role.ADMIN)
    membership = _membership_or_404(portal, membership_id)
    form = MailSenderForm().offer(senders.all_of(portal))
    if not form.validate_on_submit():
        return _members_page(portal, MemberForm(formdata=None).offer(senders.all_of(portal)), 422,
                             {membership.id: form.sender.errors or ["Choose a sender ID of this portal."]})
    sender = senders.get(portal, int(form.sender.data)) if form.sender.data else None
    senders.assign(current_actor(), portal, membership, sender)
    user = db.session().get(User, membership.user_id)
    flash(f"Mail on behalf of {user.email} now goes from {sender.address if sender else senders.DEFAULT}.")
    return redirect(url_for("portals.members", slug=slug), 303)


@bp.post("/p/<slug>/members/<id:membership_id>/role")
@login_required
def change_role(slug, membership_id):
    portal = load_portal(slug, Role.ADMIN)
    _membership_or_404(portal, membership_id)
    form = RoleForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        people.change_role(current_actor(), portal, membership_id, Role(form.role.data))
    except people.Conflict as error:
        flash(str(error))
    else:
        flash("Changed the role.")
    return redirect(url_for("portals.members", slug=slug), 303)


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
    portal = load_portal(slug, Role.STAFF)
    events = db.session().exec(
        select(AuditEvent).where(AuditEvent.portal_id == portal.id).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(500)
    ).all()
    labelled = []
    for event in events:
        protocol, auth_type = new_value_of(event.changes, "protocol"), new_value_of(event.changes, "auth_type")
        labelled.append((event, field_labels(protocol, auth_type), protocol))
    return render_template("portals/history.html", events=labelled, actions=audit.ACTIONS, describe=describe)


def _membership_or_404(portal, membership_id):
    membership = people.get_membership(portal, membership_id)
    if membership is None:
        abort(404)
    return membership


@bp.app_context_processor
def _portal_context():
    return {"portal": g.get("portal"), "role": g.get("role")}
