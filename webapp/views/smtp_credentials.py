"""SMTP credentials: admins create, change, give a new password to and revoke the sign-ins of the
devices that submit mail over SMTP; the page also says how to reach the listener."""
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_required

from ..forms.smtp_credential import NewSmtpCredentialForm, SmtpCredentialForm
from ..models import Role
from ..security import current_actor, load_portal
from ..submission import certificate, credentials

bp = Blueprint("smtp_credentials", __name__)


@bp.get("/p/<slug>/smtp-credentials")
@login_required
def index(slug):
    portal = load_portal(slug, Role.ADMIN)
    return render_template("smtp_credentials/index.html", credentials=credentials.credentials_of(portal),
                           listener=_listener())


@bp.route("/p/<slug>/smtp-credentials/new", methods=["GET", "POST"])
@login_required
def new(slug):
    portal = load_portal(slug, Role.ADMIN)
    form = NewSmtpCredentialForm()
    if form.validate_on_submit():
        try:
            credential, password = credentials.create(current_actor(), portal, form.values(),
                                                      form.username.data or None)
        except credentials.UsernameTaken as error:
            form.username.errors.append(str(error))
        else:
            return _password_page(credential, password, "Created the SMTP credential")
    return render_template("smtp_credentials/edit.html", form=form, credential=None), 422 if form.is_submitted() else 200


@bp.route("/p/<slug>/smtp-credentials/<id:credential_id>/edit", methods=["GET", "POST"])
@login_required
def edit(slug, credential_id):
    portal = load_portal(slug, Role.ADMIN)
    credential = _live_credential(portal, credential_id)
    form = SmtpCredentialForm() if request.method == "POST" else SmtpCredentialForm.of(
        credentials.values_of(credential))
    if form.validate_on_submit():
        credentials.update_credential(current_actor(), portal, credential, form.values())
        flash(f"Saved the SMTP credential “{credential.name}”.")
        return redirect(url_for("smtp_credentials.index", slug=slug), 303)
    status = 422 if form.is_submitted() else 200
    return render_template("smtp_credentials/edit.html", form=form, credential=credential), status


@bp.post("/p/<slug>/smtp-credentials/<id:credential_id>/password")
@login_required
def replace_password(slug, credential_id):
    portal = load_portal(slug, Role.ADMIN)
    credential = _live_credential(portal, credential_id)
    password = credentials.replace_password(current_actor(), portal, credential)
    return _password_page(credential, password, "Replaced the password of the SMTP credential")


@bp.route("/p/<slug>/smtp-credentials/<id:credential_id>/revoke", methods=["GET", "POST"])
@login_required
def revoke(slug, credential_id):
    portal = load_portal(slug, Role.ADMIN)
    credential = _live_credential(portal, credential_id)
    if request.method == "GET":
        return render_template("smtp_credentials/revoke.html", credential=credential)
    credentials.revoke(current_actor(), portal, credential)
    flash(f"Revoked the SMTP credential “{credential.name}”: devices using it can no longer sign in.")
    return redirect(url_for("smtp_credentials.index", slug=slug), 303)


def _live_credential(portal, credential_id):
    credential = credentials.get(portal, credential_id)
    if credential is None or credential.revoked_at is not None:
        abort(404)
    return credential


def _password_page(credential, password: str, done: str):
    """The only time the password is shown (the response is never cached: Cache-Control no-store)."""
    return render_template("smtp_credentials/password.html", credential=credential, password=password, done=done,
                           listener=_listener())


def _listener() -> dict:
    """How devices reach the listener: the name to use, the ports, the certificate's fingerprint."""
    config = current_app.config
    cert, problem = None, ""
    try:
        cert = certificate.configured_or_existing(config["SUBMISSION_TLS_CERT"], config["SUBMISSION_TLS_KEY"],
                                                  current_app.instance_path)
    except ValueError as error:
        problem = str(error)
    return {"host": config["SUBMISSION_HOSTNAME"] or request.host.rsplit(":", 1)[0].strip("[]"),
            "starttls_port": config["SUBMISSION_STARTTLS_PORT"], "tls_port": config["SUBMISSION_TLS_PORT"],
            "certificate": cert, "problem": problem}
