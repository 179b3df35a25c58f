"""The SMTP client certificate, NTLM and the transcripts in the server form: saved sealed and bound to the
host and port, shown only by subject and expiry, Validate against peers that ask for a certificate, the
transcripts written (redacted) and read back from the server's page."""
import io
import json
import re
from pathlib import Path

from sqlmodel import select

from webapp import db
from webapp.credentials import unseal
from webapp.models import AuditEvent, MailServer, ServerSecret

from tests.delivery_fixtures import outbox, smtp_settings  # noqa: F401  (fixtures)
from tests.peers.smtp_extras import client_ca, client_cert_peer, ntlm_peer, ntlm_users_file  # noqa: F401
from tests.test_server_form import VALID
from tests.test_smtp_client_cert import leaf_pem

SHOWN = ["smtp", "port", "tls", "plaintext", "client_cert", "transcripts"]


def cert_form(peer, pem: bytes | None = None, **overrides) -> dict:
    form = {**VALID, "host": "localhost", "port": str(peer.port), "security": "tls", "auth_type": "none",
            "_shown": SHOWN}
    if pem is not None:
        form.update(client_cert_enabled="y", client_cert_file=(io.BytesIO(pem), "mailer.pem"))
    form.update(overrides)
    return form


def only_server(app) -> MailServer:
    with app.app_context():
        server = db.session().exec(select(MailServer)).unique().one()
        server.secrets  # noqa: B018 - loaded while the session is open
        return server


def field_error(html: str, field: str) -> str:
    found = re.search(rf'id="{field}-help" class="error">([^<]*)', html)
    return found.group(1) if found else ""


def test_the_certificate_is_sealed_bound_and_shown_only_by_subject_and_expiry(app, admin, client_cert_peer, client_ca):
    peer = client_cert_peer("required")
    pem = leaf_pem(client_ca)
    assert admin.post("/p/help/servers/new", cert_form(peer, pem)).status_code == 303
    server = only_server(app)
    assert server.client_cert["enabled"] is True
    assert server.client_cert["subject"].startswith("CN=portal-mailer,")
    with app.app_context():
        row = db.session().exec(select(ServerSecret).where(ServerSecret.purpose == "client_cert")).one()
        assert "PRIVATE KEY" not in row.secret
        bundle = json.loads(unseal(row.secret)["password"])
        assert "PRIVATE KEY" in bundle["key"] and bundle["cert"].startswith("-----BEGIN CERTIFICATE-----")
        assert row.bound_to == {"protocol": "smtp", "host": "localhost", "port": peer.port}
        [event] = db.session().exec(select(AuditEvent).where(AuditEvent.action == "server.created")).all()
        assert event.changes["client_cert_file"] == "(changed)"
    page = admin.get(f"/p/help/servers/{server.id}/edit").text
    assert "PRIVATE KEY" not in page and bundle["key"].splitlines()[1] not in page
    stored = re.search(r'<p class="muted" id="stored-client-cert">(.*?)</p>', page, re.S).group(1)
    assert "portal-mailer" in stored and server.client_cert["expires"] in stored

    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "the server asked for a client certificate and accepted CN=portal-mailer" in report
    assert [s["commonName"] for s in peer.client_subjects] == ["portal-mailer"]


def test_another_port_needs_the_certificate_again_and_nothing_is_half_saved(app, admin, client_cert_peer, client_ca):
    peer = client_cert_peer("required")
    admin.post("/p/help/servers/new", cert_form(peer, leaf_pem(client_ca)))
    server = only_server(app)
    kept = cert_form(peer, client_cert_enabled="y", version=str(server.version))
    assert admin.post(f"/p/help/servers/{server.id}/edit", kept).status_code == 303
    moved = cert_form(peer, client_cert_enabled="y", port="2465", version=str(server.version + 1))
    response = admin.post(f"/p/help/servers/{server.id}/edit", moved, htmx=True)
    assert response.status_code == 422
    assert field_error(response.text, "client_cert_file") == (
        "The server&#39;s host or port changed since the client certificate file was saved: choose the client "
        "certificate file again to use it there.")
    assert only_server(app).settings["port"] == peer.port
    off = cert_form(peer, version=str(server.version + 1))
    assert admin.post(f"/p/help/servers/{server.id}/edit", off).status_code == 303
    assert only_server(app).client_cert == {} and only_server(app).secrets == []


def test_a_bad_file_is_refused_beside_the_field(app, admin, client_cert_peer, client_ca):
    peer = client_cert_peer("required")
    response = admin.post("/p/help/servers/new", cert_form(peer, b"-----BEGIN CERTIFICATE-----\nnope\n"), htmx=True)
    assert response.status_code == 422
    assert "This PEM file has no certificate" in field_error(response.text, "client_cert_file")
    no_file = admin.post("/p/help/servers/new", cert_form(peer, client_cert_enabled="y"), htmx=True)
    assert field_error(no_file.text, "client_cert_file") == "Choose the client certificate file."
    with app.app_context():
        assert db.session().exec(select(MailServer)).first() is None


def test_validate_of_the_form_uses_the_chosen_file_and_says_what_the_server_did(admin, client_cert_peer, client_ca):
    peer = client_cert_peer("optional", "starttls")
    form = cert_form(peer, leaf_pem(client_ca), security="starttls")
    report = admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "All checks passed" in report, report
    assert "the server asked for a client certificate and accepted CN=portal-mailer" in report
    without = admin.post("/p/help/servers/new/validate", cert_form(peer, security="starttls"), htmx=True).text
    assert "the server asked for one; none is configured" in without


def test_the_certificate_is_offered_only_with_tls(admin):
    page = admin.get("/p/help/servers/new").text
    assert "Use SSL client certificate authentication" in page and 'name="client_cert_file"' in page
    none = admin.post("/p/help/servers/new/section/tls", {"protocol": "smtp", "security": "none",
                                                           "_shown": ["tls", "plaintext"]}, htmx=True).text
    assert 'name="client_cert_file"' not in none
    graph = admin.post("/p/help/servers/new", {"protocol": "graph", "_action": "refresh"}, htmx=True).text
    assert "client certificate" not in graph.lower() and "Keep SMTP transcripts" not in graph


def test_ntlm_is_a_mechanism_and_kerberos_is_said_not_to_be(app, admin, ntlm_peer):
    page = admin.post("/p/help/servers/new/section/credentials", {"protocol": "smtp", "auth_type": "basic"},
                      htmx=True).text
    assert '<option value="NTLM">NTLM</option>' in page
    assert "Kerberos is not supported: it needs a ticket from a Kerberos server (KDC) or a keytab" in page
    assert "KERBEROS" not in page.upper().replace("KERBEROS IS NOT SUPPORTED", "").replace("A KERBEROS SERVER", "")
    peer = ntlm_peer()
    form = {**VALID, "host": "localhost", "port": str(peer.port), "username": peer.username,
            "password": peer.password, "confirm_password": peer.password, "mechanism": "NTLM"}
    report = admin.post("/p/help/servers/new/validate", form, htmx=True).text
    assert "All checks passed" in report and "with NTLM" in report
    assert peer.password not in report


def test_transcripts_are_kept_redacted_and_read_back_by_admins(app, admin, staff, smtp_peer):
    peer = smtp_peer("starttls")
    form = {**VALID, "host": "localhost", "port": str(peer.port), "username": peer.username,
            "password": peer.password, "confirm_password": peer.password, "mechanism": "PLAIN",
            "transcripts": "y", "_shown": SHOWN}
    assert admin.post("/p/help/servers/new", form).status_code == 303
    server = only_server(app)
    assert server.transcripts is True
    assert "transcripts" in admin.get(f"/p/help/servers/{server.id}/edit").text
    assert "Email server accepted" in staff.post(f"/p/help/servers/{server.id}/sample",
                                                 {"recipient": "jane@example.org"}, htmx=True).text
    staff.post(f"/p/help/servers/{server.id}/check", htmx=True)

    log = Path(app.instance_path) / "logs" / f"smtp-server-{server.id}.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["send", "check"] and all(e["ok"] for e in entries)
    text = log.read_text()
    assert peer.password not in text and "AUTH PLAIN ********" in text
    sent = entries[0]["lines"]
    assert any(re.fullmatch(r"C: <message, \d+ bytes>", line) for line in sent)
    assert not any("Subject:" in line for line in sent)
    assert oct(log.stat().st_mode & 0o777) == "0o600"

    page = admin.get(f"/p/help/servers/{server.id}/transcripts").text
    assert page.index("Validate") < page.index("Sending")  # newest first
    assert "AUTH PLAIN ********" in page and peer.password not in page
    assert staff.get(f"/p/help/servers/{server.id}/transcripts").status_code == 403


def test_transcripts_rotate_and_page(app, admin, smtp_peer):
    from webapp.mail.redact import Redactor
    from webapp.mail.report import Report
    from webapp.mail.transcripts import TranscriptLog

    peer = smtp_peer("plain")
    form = {**VALID, "host": "localhost", "port": str(peer.port), "security": "none", "auth_type": "none",
            "transcripts": "y", "_shown": SHOWN}
    admin.post("/p/help/servers/new", form)
    server = only_server(app)
    log = TranscriptLog(Path(app.instance_path) / "logs" / f"smtp-server-{server.id}.log", max_bytes=2000, backups=2)
    for number in range(60):
        log.write(Report(transcript=[f"C: NOOP {number}", "S: 334 c2VjcmV0LWNoYWxsZW5nZQ==",
                                     "S: 250 echo Very-Secret-1"]), "check", "localhost:25", Redactor(["Very-Secret-1"]))
    files = sorted(p.name for p in log.path.parent.glob(f"smtp-server-{server.id}.log*") if not p.name.endswith("lock"))
    assert files == [f"smtp-server-{server.id}.log", f"smtp-server-{server.id}.log.1", f"smtp-server-{server.id}.log.2"]
    assert all(p.stat().st_size <= 2000 for p in log.path.parent.glob(f"smtp-server-{server.id}.log*"))
    newest = log.last(3)
    assert [t.lines[0] for t in newest] == ["C: NOOP 59", "C: NOOP 58", "C: NOOP 57"]
    assert newest[0].lines[1:] == ["S: 334 ********", "S: 250 echo ********"]
    first = admin.get(f"/p/help/servers/{server.id}/transcripts").text
    assert "C: NOOP 59" in first and "Older →" in first and "C: NOOP 39" not in first
    older = admin.get(f"/p/help/servers/{server.id}/transcripts?skip=20").text
    assert "C: NOOP 39" in older and "← Newer" in older and "C: NOOP 59" not in older


def test_delivery_keeps_one_transcript_per_message_over_a_shared_connection(app, outbox, make, portal, smtp_peer):
    from webapp.models import MailState

    peer = smtp_peer("plain")
    server = make.server(portal, settings=smtp_settings(peer), transcripts=True)
    ids = [outbox.queue(portal, subject=f"Quarterly figures {n}") for n in range(3)]
    outbox.run(ids[0])
    assert all(outbox.mail(i).state == MailState.SENT for i in ids) and peer.sessions == 1

    log = Path(app.instance_path) / "logs" / f"smtp-server-{server.id}.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["send"] * 3 and all(e["ok"] for e in entries)
    assert entries[0]["lines"][0].startswith("S: 220") and entries[1]["lines"][0].startswith("C: mail FROM")  # the same session
    assert "Quarterly figures" not in log.read_text()  # the message is only its size


def test_a_failed_check_is_kept_too_with_its_reason(app, admin, make, portal, smtp_peer):
    closed = smtp_peer("closed")
    server = make.server(portal, settings={"host": "127.0.0.1", "port": closed.port}, transcripts=True)
    report = admin.post(f"/p/help/servers/{server.id}/check", htmx=True).text
    assert "nothing listens" in report
    [entry] = [json.loads(line) for line in
               (Path(app.instance_path) / "logs" / f"smtp-server-{server.id}.log").read_text().splitlines()]
    assert entry["ok"] is False and entry["summary"].startswith("Connect: nothing listens on 127.0.0.1:")
    page = admin.get(f"/p/help/servers/{server.id}/transcripts").text
    assert "failed" in page and "nothing listens on 127.0.0.1:" in page
