from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from .. import db, lists, people
from ..forms.lists import ListSearchForm
from ..forms.portal import UserEditForm, UserForm
from ..models import MAX_ID, User
from ..security import current_actor, require_superadmin
from .render import page_or_fragment

bp = Blueprint("users", __name__, url_prefix="/users")


@bp.before_request
@login_required
def _superadmins_only():
    require_superadmin()


@bp.get("/")
def index():
    """A page of the users by email; a search by email or name."""
    form = ListSearchForm(request.args, "Email or name")
    listing = people.users_page(form.text, form.page_size, request.args.get("page")) if form.validate() else None
    return page_or_fragment("users/index.html", "users/_list.html", 200 if listing is not None else 422,
                            form=form, listing=listing, base=url_for("users.index"),
                            links=lists.page_links("users.index", listing, form.query_args()),
                            total=people.users_total(), found=people.users_total(form.text) if form.text else None)


@bp.route("/new", methods=["GET", "POST"])
def new():
    form = UserForm()
    if form.validate_on_submit():
        try:
            people.create_user(current_actor(), form.email.data, form.password.data, form.name.data,
                               form.is_superadmin.data)
        except people.Conflict as error:
            form.email.errors.append(str(error))
        else:
            flash(f"Created {form.email.data}. Hand over the initial password: they choose their own at first "
                  "sign-in. Add them to a portal from its Members page.")
            return redirect(url_for("users.index"), 303)
    return render_template("users/new.html", form=form), 422 if form.is_submitted() else 200


@bp.route("/<id:user_id>", methods=["GET", "POST"])
def edit(user_id):
    user = _user_or_404(user_id)
    form = UserEditForm(obj=user)
    if form.validate_on_submit():
        try:
            people.update_user(current_actor(), user, form.email.data, form.name.data, form.is_superadmin.data,
                               form.is_active.data)
        except people.EmailTaken as error:
            form.email.errors.append(str(error))
        except people.Conflict as error:
            form.form_errors.append(str(error))
        else:
            flash(f"Saved {user.email}.")
            return redirect(url_for("users.index"), 303)
    return render_template("users/edit.html", form=form, user=user), 422 if form.is_submitted() else 200


@bp.route("/<id:user_id>/reset-password", methods=["GET", "POST"])
def reset_password(user_id):
    user = _user_or_404(user_id)
    if request.method == "POST":
        password = people.reset_password(current_actor(), user)
        return render_template("users/password_reset.html", user=user, password=password)
    return render_template("users/confirm.html", user=user, action="reset-password")


@bp.route("/<id:user_id>/remove", methods=["GET", "POST"])
def remove(user_id):
    user = _user_or_404(user_id)
    if user.id == current_user.id:
        flash("You cannot remove yourself.")
        return redirect(url_for("users.edit", user_id=user.id), 303)
    if request.method == "POST":
        try:
            people.remove_user(current_actor(), user)
        except people.Conflict as error:
            flash(str(error))
            return redirect(url_for("users.edit", user_id=user.id), 303)
        flash(f"Removed {user.email}.")
        return redirect(url_for("users.index"), 303)
    return render_template("users/confirm.html", user=user, action="remove")


def _user_or_404(user_id: int) -> User:
    user = db.session().get(User, user_id) if user_id <= MAX_ID else None
    if user is None:
        abort(404)
    return user
