from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.exceptions import HTTPException

from .. import people, recovery, sessions
from ..limits import (failed_sign_in, limiter, recovery_address, recovery_client, sign_in_account, sign_in_address,
                      sign_in_pair)
from ..forms.auth import ForgotForm, LoginForm, NewPasswordForm, PasswordForm
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


UNAVAILABLE = ("Password recovery by mail is not set up in this Mailroom. Ask an administrator to reset your "
               "password.")
SENT = ("If an account has this address, a link to choose a new password is on its way to it. It works once, "
        "for {minutes} minutes. No mail? Check the spam folder, or ask an administrator.")


@bp.route("/password/forgot", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["PASSWORD_RESET_LIMIT_PER_ADDRESS"], key_func=recovery_address,
               methods=["POST"])
@limiter.limit(lambda: current_app.config["PASSWORD_RESET_LIMIT_PER_CLIENT"], key_func=recovery_client,
               methods=["POST"])
def forgot():
    """The same answer, and the same work, whether an account has the address or not (recovery.ask)."""
    if recovery.available():
        return render_template("auth/forgot.html", form=None, unavailable=UNAVAILABLE), 503
    form = ForgotForm()
    if form.validate_on_submit():
        try:
            recovery.ask(form.email.data, request.remote_addr or "")
        except recovery.Unavailable:  # the server went away since the check above
            return render_template("auth/forgot.html", form=None, unavailable=UNAVAILABLE), 503
        sent = SENT.format(minutes=current_app.config["PASSWORD_RESET_MINUTES"])
        return render_template("auth/forgot.html", form=None, sent=sent), 200
    status = 422 if form.is_submitted() else 200
    return render_template("auth/forgot.html", form=form), status


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
def reset(token):
    """The link from the recovery mail: GET shows the form (a link checker that fetches it uses nothing).
    Like every page, Referrer-Policy same-origin: the token in the address never goes to another site."""
    dead = render_template("auth/reset.html", form=None, minutes=current_app.config["PASSWORD_RESET_MINUTES"]), 404
    if recovery.valid(token) is None:
        return dead
    form = NewPasswordForm()
    if form.validate_on_submit():
        user = recovery.set_password(token, form.new.data)
        if user is None:
            return dead
        if current_user.is_authenticated and current_user.id == user.id:
            logout_user()  # its session record ended with the others
        flash("Your new password is set, and every browser signed in as you is signed out. Sign in with it.")
        return redirect(url_for("auth.login"), 303)
    return render_template("auth/reset.html", form=form), 422 if form.is_submitted() else 200


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
