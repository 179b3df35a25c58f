from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import login_required
from sqlmodel import select

from .. import db, people
from ..forms.portal import UserForm
from ..models import User
from ..security import require_superadmin

bp = Blueprint("users", __name__, url_prefix="/users")


@bp.before_request
@login_required
def _superadmins_only():
    require_superadmin()


@bp.get("/")
def index():
    users = db.session().exec(select(User).order_by(User.email)).all()
    return render_template("users/index.html", users=users)


@bp.route("/new", methods=["GET", "POST"])
def new():
    form = UserForm()
    if form.validate_on_submit():
        try:
            people.create_user(form.email.data, form.password.data, form.name.data, form.is_superadmin.data)
        except people.Conflict as error:
            form.email.errors.append(str(error))
        else:
            flash(f"Created {form.email.data}. Add them to a portal from its Members page.")
            return redirect(url_for("users.index"), 303)
    return render_template("users/new.html", form=form), 422 if form.is_submitted() else 200
