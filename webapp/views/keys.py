"""A portal's API keys (admins): list, create (the key shown once), revoke."""
from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask_login import login_required

from .. import apikeys
from ..forms.apikey import ApiKeyForm
from ..models import Role
from ..security import current_actor, load_portal

bp = Blueprint("keys", __name__)


@bp.route("/p/<slug>/api-keys", methods=["GET", "POST"])
@login_required
def index(slug):
    portal = load_portal(slug, Role.ADMIN)
    form = ApiKeyForm()
    if form.validate_on_submit():
        key, plain = apikeys.create(current_actor(), portal, form.name.data)
        # The key is in this answer only (no-store, like every page); a reload asks before posting again.
        return _page(ApiKeyForm(formdata=None), 200, created=key, plain=plain)
    return _page(form, 422 if form.is_submitted() else 200)


@bp.route("/p/<slug>/api-keys/<id:key_id>/revoke", methods=["GET", "POST"])
@login_required
def revoke(slug, key_id):
    portal = load_portal(slug, Role.ADMIN)
    key = apikeys.get_key(portal, key_id)
    if key is None:
        abort(404)
    if request.method == "GET":
        return render_template("keys/revoke.html", key=key)
    apikeys.revoke(current_actor(), portal, key)
    flash(f"Revoked the API key “{key.name}”: requests with it are refused from now on.")
    return redirect(url_for("keys.index", slug=slug), 303)


def _page(form, status, **created):
    portal = g.portal
    api_url = (portal.base_url or request.host_url).rstrip("/") + url_for("api.submit", slug=portal.slug)
    return render_template("keys/index.html", form=form, keys=apikeys.keys_of(portal), api_url=api_url,
                           **created), status
