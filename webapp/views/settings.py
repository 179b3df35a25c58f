"""Settings of the whole installation, for super-admins: the global egress policy, system mail."""
from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_required

from .. import lists, network, systemmail
from ..forms.egress import EgressForm, EgressProbeForm
from ..forms.lists import ListSearchForm
from ..forms.system_mail import SystemMailForm
from ..security import current_actor, require_superadmin
from .render import page_or_fragment

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
    """Which server sends Mailroom's own mail (password recovery; notices of a portal without a working
    server): the current one, and a search through every portal's servers, a page at a time."""
    form = SystemMailForm()
    if form.validate_on_submit():
        try:
            systemmail.designate(current_actor(), int(form.server.data) if form.server.data else None)
        except ValueError as error:
            form.server.errors.append(str(error))
        else:
            flash("Saved the system-mail server.")
            return redirect(url_for("settings.system_mail"), 303)
    search = ListSearchForm(request.args, "Portal or server",
                            "A portal's name, or a server's description, host or From address.")
    listing = systemmail.choices_page(search.text, search.page_size, request.args.get("page")) \
        if search.validate() else None
    status = 422 if form.is_submitted() or listing is None else 200
    return page_or_fragment(
        "settings/system_mail.html", "settings/_system_mail_choices.html", status, form=form, search=search,
        listing=listing, base=url_for("settings.system_mail"),
        links=lists.page_links("settings.system_mail", listing, search.query_args()),
        found=systemmail.choices_total(search.text) if search.text else None, current=systemmail.current_choice(),
        problems=systemmail.problems(), public_url=current_app.config.get("PUBLIC_URL"),
        minutes=current_app.config["PASSWORD_RESET_MINUTES"])
