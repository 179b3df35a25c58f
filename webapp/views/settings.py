"""Settings of the whole installation, for super-admins: the global egress policy, system mail."""
from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_required

from .. import network, systemmail
from ..forms.egress import EgressForm, EgressProbeForm
from ..forms.system_mail import SystemMailForm
from ..security import current_actor, require_superadmin

bp = Blueprint("settings", __name__, url_prefix="/settings")


@bp.before_request
@login_required
def _superadmins_only():
    require_superadmin()


@bp.route("/egress", methods=["GET", "POST"])
def egress():
    rules = network.global_rules()
    form = EgressForm(data=rules) if request.method == "GET" else EgressForm()
    if form.validate_on_submit():
        network.set_global_rules(current_actor(), form.allow.data, form.deny.data)
        flash("Saved the global egress policy.")
        return redirect(url_for("settings.egress"), 303)
    return render_template("settings/egress.html", form=form, probe=EgressProbeForm(formdata=None),
                           protected=network.policy_for(None).protected), 422 if form.is_submitted() else 200


@bp.post("/egress/probe")
def probe():
    form = EgressProbeForm()
    answer = network.decide(None, form.host.data, form.port.data) if form.validate_on_submit() else None
    return render_template("settings/egress.html", form=EgressForm(data=network.global_rules()), probe=form,
                           answer=answer, protected=network.policy_for(None).protected), 200 if answer else 422


@bp.route("/system-mail", methods=["GET", "POST"])
def system_mail():
    """Which server sends Mailroom's own mail (password recovery; notices of a portal without a working server)."""
    server = systemmail.designated()
    form = SystemMailForm(data={"server": str(server.id) if server else ""} if request.method == "GET" else None)
    form.offer(systemmail.choices())
    if form.validate_on_submit():
        try:
            systemmail.designate(current_actor(), int(form.server.data) if form.server.data else None)
        except ValueError as error:
            form.server.errors.append(str(error))
        else:
            flash("Saved the system-mail server.")
            return redirect(url_for("settings.system_mail"), 303)
    return render_template("settings/system_mail.html", form=form, problems=systemmail.problems(),
                           public_url=current_app.config.get("PUBLIC_URL"), server=server,
                           minutes=current_app.config["PASSWORD_RESET_MINUTES"]), 422 if form.is_submitted() else 200
