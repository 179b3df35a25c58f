from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from markupsafe import escape
from flask_login import current_user, login_required
from sqlmodel import select

from .. import audit, db, network, people
from ..forms.egress import EgressForm
from ..forms.fields import describe, field_labels, new_value_of
from ..forms.portal import MemberForm, PortalForm, PortalSettingsForm, RoleForm
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


def _settings_page(form, egress_form, status):
    return render_template("portals/settings.html", form=form, egress=egress_form), status


@bp.route("/p/<slug>/members", methods=["GET", "POST"])
@login_required
def members(slug):
    portal = load_portal(slug, Role.ADMIN)
    form = MemberForm()
    if form.validate_on_submit():
        user = people.find_user(form.email.data)
        if user is None:
            form.email.errors.append("No user has this email. A super-admin creates users under Users.")
        else:
            try:
                people.add_member(current_actor(), portal, user, Role(form.role.data))
            except people.Conflict as error:
                form.email.errors.append(str(error))
            else:
                flash(f"Added {user.email} as {form.role.data}.")
                return redirect(url_for("portals.members", slug=slug), 303)
    status = 422 if form.is_submitted() else 200
    return render_template("portals/members.html", form=form, members=people.members_of(portal),
                           role_form=RoleForm), status


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
        labelled.append((event, field_labels(protocol, auth_type, event.action), protocol))
    return render_template("portals/history.html", events=labelled, actions=audit.ACTIONS, describe=describe)


def _membership_or_404(portal, membership_id):
    membership = people.get_membership(portal, membership_id)
    if membership is None:
        abort(404)
    return membership


@bp.app_context_processor
def _portal_context():
    return {"portal": g.get("portal"), "role": g.get("role")}
