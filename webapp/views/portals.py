from functools import cache

from flask import Blueprint, abort, flash, g, redirect, render_template, url_for
from flask_login import current_user, login_required
from sqlmodel import select

from wtforms.fields.core import UnboundField

from .. import audit, db, people
from ..forms.portal import MemberForm, PortalForm, PortalSettingsForm, RoleForm
from ..forms.server import ServerForm
from ..models import AuditEvent, Membership, Portal, Role
from ..security import load_portal, require_superadmin

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
            portal = people.create_portal(form.slug.data, form.name.data, form.base_url.data)
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
        people.update_portal(portal, form.name.data, form.base_url.data)
        flash("Saved the portal settings.")
        return redirect(url_for("portals.settings", slug=slug), 303)
    return render_template("portals/settings.html", form=form), 422 if form.is_submitted() else 200


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
                people.add_member(portal, user, Role(form.role.data))
            except people.Conflict as error:
                form.email.errors.append(str(error))
            else:
                flash(f"Added {user.email} as {form.role.data}.")
                return redirect(url_for("portals.members", slug=slug), 303)
    status = 422 if form.is_submitted() else 200
    return render_template("portals/members.html", form=form, members=people.members_of(portal),
                           role_form=RoleForm), status


@bp.post("/p/<slug>/members/<int:membership_id>/role")
@login_required
def change_role(slug, membership_id):
    portal = load_portal(slug, Role.ADMIN)
    membership = _membership_or_404(portal, membership_id)
    form = RoleForm()
    if form.validate_on_submit():
        try:
            people.change_role(portal, membership, Role(form.role.data))
        except people.Conflict as error:
            flash(str(error))
        else:
            flash("Changed the role.")
    return redirect(url_for("portals.members", slug=slug), 303)


@bp.post("/p/<slug>/members/<int:membership_id>/remove")
@login_required
def remove_member(slug, membership_id):
    portal = load_portal(slug, Role.ADMIN)
    try:
        people.remove_member(portal, _membership_or_404(portal, membership_id))
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
    return render_template("portals/history.html", events=events, actions=audit.ACTIONS, fields=_field_labels())


@cache
def _field_labels() -> dict:
    """What admins see a field called in the forms, for the History page."""
    labels = {"auth_type": "Authentication", "password": "Password", "order": "Order", "superadmin": "Super-admin",
              "recipient": "Recipient", "slug": "Slug"}
    for form in (ServerForm, PortalForm, MemberForm):
        for name in dir(form):
            field = getattr(form, name)
            if isinstance(field, UnboundField) and field.args:
                labels.setdefault(name, field.args[0])
    return labels


def _membership_or_404(portal, membership_id):
    membership = people.get_membership(portal, membership_id)
    if membership is None:
        abort(404)
    return membership


@bp.app_context_processor
def _portal_context():
    return {"portal": g.get("portal"), "role": g.get("role")}
