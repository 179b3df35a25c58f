"""S/MIME in the server form and in every mail the server sends: the signing certificate and key
(PKCS#12 or PEM, with their password) sealed and shown by subject, issuer and expiry only; the
refusals beside their fields, nothing half-saved; the portal's S/MIME certificates page; Verify;
sample mails and queued mail received by a real SMTP peer and checked with openssl."""
import re

import pytest
from sqlmodel import select

from webapp import db
from webapp.credentials import unseal
from webapp.models import AuditEvent, MailServer, MailState, ServerSecret, SmimeCertificate

from .delivery_fixtures import outbox  # noqa: F401 - fixture
from .smime_certs import TestCA, decrypt, upload, verify
from .test_server_form import VALID

SENDER, JANE, BOB = "helpdesk@example.com", "jane@example.org", "bob@example.org"
P12_PASSWORD = "p12-Export-Secret"
SHOWN = ["smtp", "port", "plaintext", "smime"]


@pytest.fixture(scope="module")
def ca():
    return TestCA()


@pytest.fixture(scope="module")
def signer(ca):
    return ca.issue(SENDER)


@pytest.fixture
def files(tmp_path, ca):
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    return tmp_path


def smime_form(smtp, signer=None, **overrides) -> dict:
    form = {**VALID, "host": "127.0.0.1", "port": str(smtp.port), "security": "none", "auth_type": "none",
            "_shown": SHOWN, "smime_format": "pkcs12", "smime_hash": "sha256", "smime_attach_certificate": "y",
            "smime_algorithm": "aes256-cbc"}
    if signer is not None:
        form.update(smime_sign="y", smime_certificate_file=upload(signer.pkcs12(P12_PASSWORD), "signer.p12"),
                    smime_password=P12_PASSWORD)
    return {**form, **overrides}


def only_server(app) -> MailServer:
    with app.app_context():
        server = db.session().exec(select(MailServer)).unique().one()
        server.secrets  # noqa: B018 - loaded while the session is open
        return server


def server_count(app) -> int:
    with app.app_context():
        return len(db.session().exec(select(MailServer)).unique().all())


def add_certificate(admin, issued, filename="jane.pem", der=False, **values):
    data = issued.der if der else issued.pem
    return admin.post("/p/help/smime-certificates", {"certificate": upload(data, filename), **values})


# --- saving the signing certificate -------------------------------------------------------------------------

def test_the_signing_key_is_sealed_and_the_certificate_shown_by_subject_issuer_and_expiry(app, admin, smtp_peer,
                                                                                            signer):
    smtp = smtp_peer("plain")
    assert admin.post("/p/help/servers/new", smime_form(smtp, signer)).status_code == 303
    server = only_server(app)
    assert server.smime["sign"] is True and server.smime["hash"] == "sha256"
    assert "BEGIN CERTIFICATE" in server.smime["certificate"] and "PRIVATE" not in str(server.smime)
    with app.app_context():
        [row] = db.session().exec(select(ServerSecret).where(ServerSecret.purpose == "smime_key")).all()
        assert "PRIVATE KEY" not in row.secret and P12_PASSWORD not in row.secret
        assert unseal(row.secret)["key"] == signer.key_pem().decode()  # the key only, never the password
        [event] = db.session().exec(select(AuditEvent).where(AuditEvent.action == "server.created")).all()
        assert event.changes["smime_certificate_file"] == "(changed)" and event.changes["smime_sign"] == [None, True]
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    facts = re.search(r'<p class="muted" id="stored-signing-certificate">(.*?)</p>', page, re.S).group(1)
    assert f"<strong>CN={SENDER}</strong>" in facts and "issued by CN=Mailroom Test S/MIME CA" in facts
    assert f"valid until {signer.certificate.not_valid_after_utc:%Y-%m-%d} UTC" in facts
    assert "PRIVATE KEY" not in page and P12_PASSWORD not in page
    assert P12_PASSWORD not in admin.get("/p/help/history").text


def test_saving_again_keeps_the_key_and_turning_signing_off_forgets_it(app, admin, smtp_peer, signer):
    smtp = smtp_peer("plain")
    admin.post("/p/help/servers/new", smime_form(smtp, signer))
    server = only_server(app)
    again = smime_form(smtp, smime_sign="y", smime_hash="sha512", version=str(server.version))
    assert admin.post(f"/p/help/servers/{server.id}/edit", again).status_code == 303
    kept = only_server(app)
    assert kept.smime["hash"] == "sha512" and kept.smime["certificate"] == server.smime["certificate"]
    assert [s.purpose for s in kept.secrets] == ["smime_key"]
    off = smime_form(smtp, version=str(kept.version))
    assert admin.post(f"/p/help/servers/{server.id}/edit", off).status_code == 303
    gone = only_server(app)
    assert gone.secrets == [] and gone.smime == {}


@pytest.mark.parametrize("case, field, words", [
    ("wrong password", "smime_password", "The password does not open this PKCS#12 file"),
    ("expired", "smime_certificate_file", "The signing certificate expired on"),
    ("key of another certificate", "smime_key_file", "The private key does not belong to this certificate"),
    ("no file", "smime_certificate_file", "Signing is on: choose the signing certificate file"),
    ("PEM without its key", "smime_key_file", "Choose the private key (PEM) that belongs to the certificate."),
])
def test_a_file_that_will_not_sign_is_refused_beside_its_field_and_nothing_is_saved(app, admin, smtp_peer, ca,
                                                                                   signer, case, field, words):
    smtp = smtp_peer("plain")
    form = smime_form(smtp, signer)
    if case == "wrong password":
        form["smime_password"] = "not-it"
    elif case == "expired":
        form["smime_certificate_file"] = upload(ca.issue(SENDER, expired=True).pkcs12(P12_PASSWORD), "old.p12")
    elif case == "key of another certificate":
        form.update(smime_format="pem", smime_certificate_file=upload(signer.pem, "signer.pem"),
                    smime_key_file=upload(ca.issue(SENDER).key_pem(), "other.key"), smime_password="")
    elif case == "no file":
        del form["smime_certificate_file"]
    else:
        form.update(smime_format="pem", smime_certificate_file=upload(signer.pem, "signer.pem"))
    response = admin.post("/p/help/servers/new", form, htmx=True)
    assert response.status_code == 422
    error = re.search(rf'<small id="{field}-help" class="error">([^<]*)</small>', response.text)
    assert error and words in error.group(1).replace("&#39;", "'"), response.text[-3000:]
    assert server_count(app) == 0
    assert P12_PASSWORD not in response.text


def test_a_pem_certificate_with_its_password_protected_key_signs(app, admin, smtp_peer, signer):
    smtp = smtp_peer("plain")
    form = smime_form(smtp, signer, smime_format="pem", smime_certificate_file=upload(signer.pem, "signer.pem"),
                      smime_key_file=upload(signer.key_pem("key-Secret"), "signer.key"), smime_password="key-Secret")
    assert admin.post("/p/help/servers/new", form).status_code == 303
    with app.app_context():
        [row] = db.session().exec(select(ServerSecret)).all()
        assert unseal(row.secret)["key"] == signer.key_pem().decode()


# --- the recipients' certificates ---------------------------------------------------------------------------

def test_recipient_certificates_are_listed_paginated_and_deleted(app, admin, ca):
    assert add_certificate(admin, ca.issue(JANE, BOB)).status_code == 303
    assert add_certificate(admin, ca.issue("carl@example.org"), "carl.der", der=True).status_code == 303
    page = admin.get("/p/help/smime-certificates").text
    rows = re.findall(r"<tr>\s*<td>([^<]+)</td>\s*<td>([^<]+)</td>\s*<td>([^<]+)</td>", page)
    assert [r[0] for r in rows] == [BOB, "carl@example.org", JANE]  # one row per address, by address
    assert rows[2][1] == f"CN={JANE}" and rows[2][2] == "CN=Mailroom Test S/MIME CA,O=Mailroom tests"
    for n in range(26):
        add_certificate(admin, ca.issue(f"user{n:02}@example.org"))
    first = admin.get("/p/help/smime-certificates?size=25").text
    assert first.count("<tr>") == 1 + 25 and 'rel="next"' in first and 'rel="prev"' not in first
    following = re.search(r'<a href="([^"]+)" hx-get="[^"]+" hx-target="#smime-certificates" hx-swap="outerHTML" '
                          r'rel="next">', first).group(1).replace("&amp;", "&")
    second = admin.get(following, headers={"HX-Request": "true"}).text
    assert second.startswith('<section id="smime-certificates">') and second.count("<tr>") == 1 + 4
    with app.app_context():
        row = db.session().exec(select(SmimeCertificate).where(SmimeCertificate.address == JANE)).one()
    assert admin.post(f"/p/help/smime-certificates/{row.id}/remove").status_code == 303
    assert f"<td>{JANE}</td>" not in admin.get("/p/help/smime-certificates?size=200").text
    with app.app_context():
        actions = db.session().exec(select(AuditEvent.action, AuditEvent.subject)).all()
    assert ("smime_certificate.removed", f"S/MIME certificate for {JANE}") in actions
    assert f"S/MIME certificate for {JANE}" in admin.get("/p/help/history").text


@pytest.mark.parametrize("make_file, words", [
    (lambda ca: ca.issue(JANE, ec_key=True).pem, "Mailroom encrypts to RSA certificates only"),
    (lambda ca: ca.issue(JANE, expired=True).pem, "This certificate expired on"),
    (lambda ca: ca.issue(JANE).key_pem(), "This is not a certificate in PEM or DER"),
    (lambda ca: ca.issue().pem, "This certificate names no mail address: type the address it is for."),
])
def test_a_recipient_certificate_that_will_not_do_is_refused_in_words(app, admin, ca, make_file, words):
    response = admin.post("/p/help/smime-certificates", {"certificate": upload(make_file(ca), "x.pem")})
    assert response.status_code == 422
    error = re.search(r'<small id="certificate-help" class="error">([^<]*)</small>', response.text).group(1)
    assert words in error
    with app.app_context():
        assert db.session().exec(select(SmimeCertificate)).all() == []


def test_a_certificate_for_another_address_is_refused(admin, ca):
    response = add_certificate(admin, ca.issue(JANE), address=BOB)
    assert response.status_code == 422 and f"This certificate is for {JANE}, not {BOB}" in response.text
    assert add_certificate(admin, ca.issue(), address=BOB).status_code == 303


# --- mail goes out signed and encrypted -----------------------------------------------------------------------

def test_a_sample_mail_goes_out_signed_and_encrypted_and_openssl_reads_it(app, admin, staff, smtp_peer, ca, signer,
                                                                         files):
    smtp = smtp_peer("plain")
    jane = ca.issue(JANE)
    add_certificate(admin, jane)
    admin.post("/p/help/servers/new", smime_form(smtp, signer, smime_encrypt="y", smime_algorithm="aes128-cbc"))
    server = only_server(app)
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": JANE}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    assert "signed (SHA-256, certificate attached) and encrypted (AES-128-CBC) to 1 recipient(s)" in sent
    [received] = smtp.messages
    assert received.message.get_content_type() == "application/pkcs7-mime" and b"this is a sample mail" not in received.data
    assert received.message["Subject"].startswith("Mailroom sample mail") and received.message["To"] == JANE
    cert, key = jane.write(files, "jane")
    content = verify(decrypt(received.data, cert, key), files / "ca.pem")
    assert b"this is a sample mail from Mailroom" in content


def test_a_recipient_without_a_certificate_fails_the_sample_with_the_reason_and_nothing_is_sent(app, admin, staff,
                                                                                                smtp_peer, signer):
    smtp = smtp_peer("plain")
    admin.post("/p/help/servers/new", smime_form(smtp, signer, smime_encrypt="y"))
    server = only_server(app)
    failed = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": BOB}, htmx=True).text
    assert f"encryption is on, and no S/MIME certificate for {BOB}: the message was not sent (never in clear)" in failed
    assert smtp.messages == [] and smtp.sessions == 0  # not even a connection


def test_queued_mail_is_signed_and_a_recipient_without_a_certificate_fails_it_for_good(app, admin, outbox, portal,
                                                                                     smtp_peer, ca, signer, files):
    smtp = smtp_peer("plain")
    add_certificate(admin, ca.issue("ann@example.org"))
    admin.post("/p/help/servers/new", smime_form(smtp, signer, smime_hash="sha384"))
    signed_only = outbox.queue(portal, to=["ann@example.org"], subject="Signed")
    outbox.run(signed_only)
    assert outbox.mail(signed_only).state == MailState.SENT
    [received] = smtp.messages
    assert received.message.get_content_type() == "multipart/signed" and received.message.get_param("micalg") == \
        "sha-384"
    assert b"Body of Signed" in verify(received.data, files / "ca.pem")
    server = only_server(app)
    admin.post(f"/p/help/servers/{server.id}/edit", smime_form(smtp, smime_sign="y", smime_encrypt="y",
                                                               version=str(server.version)))
    refused = outbox.queue(portal, to=["ann@example.org", "zed@example.org"], subject="Encrypted")
    outbox.run(refused)
    mail = outbox.mail(refused)
    assert mail.state == MailState.FAILED and "no S/MIME certificate for zed@example.org" in mail.last_error
    assert len(smtp.messages) == 1  # nothing more went out, in clear or otherwise


# --- Verify ---------------------------------------------------------------------------------------------------

def test_verify_signs_and_encrypts_a_test_message_and_reports_each_step(app, admin, smtp_peer, ca, signer):
    smtp = smtp_peer("plain")
    add_certificate(admin, ca.issue(JANE))
    typed = admin.post("/p/help/servers/new/smime-verify", smime_form(smtp, signer, smime_encrypt="y"), htmx=True)
    assert typed.status_code == 200
    report = typed.text
    assert "S/MIME works:" in report and "Nothing was sent." in report
    assert "the key belongs to the certificate, which is valid for another" in report
    assert "a test message was signed with SHA-256" in report
    assert "encrypted with AES-256-CBC to the signing certificate and decrypted again: it is intact" in report
    assert "certificates for 1 address(es) are stored" in report
    assert smtp.messages == [] and server_count(app) == 0  # nothing sent, nothing saved
    admin.post("/p/help/servers/new", smime_form(smtp, signer))
    server = only_server(app)
    saved = admin.post(f"/p/help/servers/{server.id}/smime-verify", smime_form(smtp, smime_sign="y"), htmx=True).text
    assert "S/MIME works:" in saved and f"CN={SENDER}" in saved
    wrong = admin.post("/p/help/servers/new/smime-verify", smime_form(smtp, signer, smime_password="nope"),
                       htmx=True).text
    assert "S/MIME verification failed at “Signing certificate”" in wrong
    assert "The password does not open this PKCS#12 file" in wrong.replace("&#39;", "'")
    other = admin.post("/p/help/servers/new/smime-verify",
                       smime_form(smtp, ca.issue("someone@else.example", email_protection=False)), htmx=True).text
    assert "not the From address helpdesk@example.com" in other and "does not include email protection" in other


def test_without_javascript_verify_answers_the_whole_form_with_the_report_in_place(app, admin, smtp_peer, signer):
    smtp = smtp_peer("plain")
    page = admin.post("/p/help/servers/new/smime-verify", smime_form(smtp, signer, description="Typed relay")).text
    assert "<h1>Add mail server</h1>" in page and 'value="Typed relay"' in page
    report = re.search(r'<div id="smime-report" aria-live="polite">(.*?)</div>', page, re.S).group(1)
    assert "S/MIME works:" in report and P12_PASSWORD not in page
    assert server_count(app) == 0


def test_files_too_large_for_a_certificate_are_refused_without_reading_on(app, admin, smtp_peer, signer):
    smtp = smtp_peer("plain")
    huge = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 200_000
    response = admin.post("/p/help/servers/new", smime_form(smtp, signer, smime_certificate_file=upload(huge, "x.p12")),
                          htmx=True)
    assert response.status_code == 422
    assert re.search(r'id="smime_certificate_file-help" class="error">This file is too large', response.text)
    page = admin.post("/p/help/smime-certificates", {"certificate": upload(huge, "x.pem")})
    assert page.status_code == 422 and "This file is too large for a certificate." in page.text
    assert server_count(app) == 0


def test_a_stored_key_the_configured_keys_cannot_read_is_said_in_words(app, admin, staff, smtp_peer, signer):
    from cryptography.fernet import Fernet

    smtp = smtp_peer("plain")
    admin.post("/p/help/servers/new", smime_form(smtp, signer))
    with app.app_context():
        row = db.session().exec(select(ServerSecret).where(ServerSecret.purpose == "smime_key")).one()
        row.secret = Fernet(Fernet.generate_key()).encrypt(b"sealed with a key this app does not have").decode()
        db.session().commit()
    server = only_server(app)
    verified = admin.post(f"/p/help/servers/{server.id}/smime-verify", smime_form(smtp, smime_sign="y"),
                          htmx=True).text
    assert "the stored signing key cannot be read with the configured keys" in verified
    failed = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": JANE}, htmx=True).text
    assert "The mail was not sent" in failed and "cannot be read with the configured keys" in failed
    assert smtp.messages == []
