from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.exceptions import HTTPException

from .. import people, sessions
from ..limits import failed_sign_in, limiter, sign_in_account, sign_in_address, sign_in_pair
from ..forms.auth import LoginForm, PasswordForm
from ..forms.base import breaks_a_line
from ..security import current_actor

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["SIGN_IN_LIMIT_PER_ACCOUNT_AND_ADDRESS"], key_func=sign_in_pair,
               methods=["POST"], deduct_when=failed_sign_in)
@limiter.limit(lambda: current_app.config["SIGN_IN_LIMIT_PER_ADDRESS"], key_func=sign_in_address,
               methods=["POST"], deduct_when=failed_sign_in)
@limiter.limit(lambda: current_app.config["SIGN_IN_LIMIT_PER_ACCOUNT"], key_func=sign_in_account,
               methods=["POST"], deduct_when=failed_sign_in)
def login():
    form = LoginForm()
    if form.validate_on_submit():
        user = people.authenticate(form.email.data, form.password.data)
        if user:
            sessions.sign_in(session, user)
            login_user(user)
            return redirect(safe_next(request.args.get("next")), 303)
        form.form_errors.append("The email or password is not right.")
    status = 422 if form.is_submitted() else 200
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout():
    logout_user()
    sessions.sign_out(session)
    flash("You are signed out.")
    return redirect(url_for("auth.login"), 303)


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def password():
    form = PasswordForm()
    if form.validate_on_submit():
        if people.authenticate(current_user.email, form.current.data) is None:
            form.current.errors.append("This is not your current password.")
        elif form.new.data == form.current.data:
            form.new.errors.append("Choose a password other than the current one.")
        else:
            people.change_password(current_actor(), current_user, form.new.data, keep_session=session.sid)
            flash("Your password is changed. Every other browser signed in as you is signed out.")
            return redirect(url_for("portals.index"), 303)
    return render_template("auth/password.html", form=form), 422 if form.is_submitted() else 200


def safe_next(target: str | None) -> str:
    """Only ever a path of this app: nothing absolute, nothing that leaves the site."""
    fallback = url_for("portals.index")
    if not target or breaks_a_line(target) or "\\" in target:
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or target.startswith("//"):
        return fallback
    try:
        current_app.url_map.bind("localhost").match(parts.path, method="GET")
    except HTTPException:
        return fallback
    return target
