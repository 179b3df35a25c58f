"""S/MIME: the Verify button of the server form, and the portal's S/MIME certificates page (its
recipients' certificates)."""
from types import SimpleNamespace

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import login_required
from werkzeug.datastructures import CombinedMultiDict

from .. import mailservers, smime_certificates, smime_settings
from ..crypto import SecretUnreadable
from ..forms.server import ServerForm
from ..forms.smime import SmimeSection, settings_of
from ..forms.smime_certificate import SmimeCertificateForm
from ..mail.report import Outcome, Report, Step
from ..mail.smime import SmimeSettings
from ..delivery.times import aware
from ..models import Role, utcnow
from ..pagination import size_of
from ..security import current_actor, load_portal
from .render import page_or_fragment

bp = Blueprint("smime", __name__)


@bp.app_template_global("smime_facts")
def smime_facts(server) -> SimpleNamespace | None:
    """What the server page shows of the stored signing certificate: subject, issuer, expiry."""
    if server is None or not getattr(server, "smime", None):
        return None
    facts = SmimeSettings.from_dict(server.smime).facts()
    if facts is None:
        return None
    return SimpleNamespace(subject=facts.subject, issuer=facts.issuer, not_after=facts.not_after,
                           expired=facts.not_after < utcnow())


@bp.post("/p/<slug>/servers/new/smime-verify")
@bp.post("/p/<slug>/servers/<id:server_id>/smime-verify")
@login_required
def verify(slug, server_id=None):
    """Sign and encrypt a test message with the S/MIME settings in the form (the files chosen, else
    the saved certificate and key); nothing is sent, nothing saved."""
    portal = load_portal(slug, Role.ADMIN)
    server = None
    if server_id is not None:
        server = mailservers.get_server(portal, server_id)
        if server is None:
            abort(404)
    section = SmimeSection(CombinedMultiDict([request.files, request.form]))
    if section.validate():
        values = smime_settings.SmimeValues(settings_of(section), section.signer)
        try:
            report = smime_settings.verify(portal, server, values, request.form.get("from_address", "").strip())
        except SecretUnreadable:
            report = Report(steps=[Step("Signing certificate", Outcome.FAILED, "the stored signing key cannot be "
                                        "read with the configured keys", hint="choose the certificate file again "
                                        "and save; or restore the key that encrypted it")])
    else:
        problems = [f"{field.label.text}: {error}" for field in section for error in field.errors]
        report = Report(steps=[Step("Signing certificate", Outcome.FAILED, "; ".join(problems),
                                    hint="choose the right file and type its password, then Verify again")])
    if request.htmx:
        return render_template("servers/_smime_report.html", report=report)
    # Without JavaScript the whole form was posted here: the page again, as typed, with the report in place.
    form = ServerForm(CombinedMultiDict([request.files, request.form]),
                      stored_secret=bool(server and server.credential and server.credential.secret))
    return render_template("servers/edit.html", form=form, server=server, smime_report=report)


@bp.get("/p/<slug>/smime-certificates")
@login_required
def index(slug):
    portal = load_portal(slug, Role.ADMIN)
    return _page(portal, SmimeCertificateForm(formdata=None))


@bp.post("/p/<slug>/smime-certificates")
@login_required
def add(slug):
    portal = load_portal(slug, Role.ADMIN)
    form = SmimeCertificateForm()
    if form.validate_on_submit():
        data = form.file_bytes()
        if data is not None:
            try:
                added = smime_certificates.add(current_actor(), portal, data, form.address.data or "")
            except smime_certificates.Refused as refused:
                form.certificate.errors = [*form.certificate.errors, str(refused)]
            else:
                flash(f"Added the certificate for {', '.join(row.address for row in added)}.")
                return redirect(url_for("smime.index", slug=slug), 303)
    return _page(portal, form, 422)


@bp.post("/p/<slug>/smime-certificates/<id:certificate_id>/remove")
@login_required
def remove(slug, certificate_id):
    portal = load_portal(slug, Role.ADMIN)
    row = smime_certificates.get(portal, certificate_id)
    if row is None:
        abort(404)
    smime_certificates.remove(current_actor(), portal, row)
    flash(f"Removed the certificate for {row.address}.")
    return redirect(url_for("smime.index", slug=slug), 303)


def _page(portal, form, status=200):
    size = size_of(request.args.get("size"))
    listing = smime_certificates.page_of(portal, size, request.args.get("page"))
    links = {"next": listing.next and url_for("smime.index", slug=portal.slug, size=size, page=listing.next),
             "previous": listing.previous and url_for("smime.index", slug=portal.slug, size=size,
                                                     page=listing.previous)}
    now = utcnow()
    expired = {row.id for row in listing.rows if aware(row.not_after) < now}
    return page_or_fragment("smime/index.html", "smime/_list.html", status, form=form, listing=listing, links=links,
                            expired=expired, remove_base=url_for("smime.index", slug=portal.slug))
