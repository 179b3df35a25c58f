"""S/MIME through the HTTP APIs, as their services take it: Microsoft Graph's MIME send (POST
/sendMail, text/plain base64: "Attach S/MIME signatures ... Encrypt message content using S/MIME ...
only in their MIME message format", learn.microsoft.com/graph/outlook-send-mime-message), EWS's
MimeContent and Gmail's raw. Each peer receives the protected bytes, which openssl verifies and
decrypts; the server's own headers (Graph's Importance and X- headers) stay outside the signature."""
import pytest

from .smime_certs import TestCA, decrypt, upload, verify
from .test_ews import ews_form, peer  # noqa: F401 - fixture
from .test_gmail import gmail, gmail_form, key  # noqa: F401 - fixtures
from .test_graph import authority, graph, graph_form  # noqa: F401 - fixtures
from .test_oauth import MAILBOX, authorize, save

JANE = "jane@example.org"
PASSWORD = "p12-Secret"


@pytest.fixture(scope="module")
def ca():
    return TestCA()


@pytest.fixture
def files(tmp_path, ca):
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    return tmp_path


@pytest.fixture
def jane(admin, ca):
    issued = ca.issue(JANE)
    assert admin.post("/p/help/smime-certificates", {"certificate": upload(issued.pem, "jane.pem")}).status_code == 303
    return issued


def with_smime(form: dict, signer) -> dict:
    return {**form, "_shown": [*form["_shown"], "smime"], "smime_sign": "y", "smime_format": "pkcs12",
            "smime_certificate_file": upload(signer.pkcs12(PASSWORD), "signer.p12"), "smime_password": PASSWORD,
            "smime_hash": "sha256", "smime_attach_certificate": "y", "smime_encrypt": "y",
            "smime_algorithm": "aes256-cbc"}


def opened(raw: bytes, jane, files) -> bytes:
    cert, key_file = jane.write(files, "jane")
    return verify(decrypt(raw, cert, key_file), files / "ca.pem")


def test_graph_sends_the_signed_and_encrypted_mime(app, admin, staff, authority, graph, test_ca_file, ca, jane,
                                                   files):
    server = save(app, admin, with_smime(graph_form(authority, graph), ca.issue(MAILBOX)))
    assert authorize(admin, server, test_ca_file).status_code == 200
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": JANE}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent and "202 Accepted" in sent
    [mail] = graph.sent
    assert mail.json is None and mail.recipients == [JANE]
    assert mail.raw.startswith(b"Importance: High\r\nX-Portal: help-desk\r\n")  # outside, where S/MIME never reaches
    assert mail.mime.get_content_type() == "application/pkcs7-mime" and mail.item_class == "IPM.Note.SMIME"
    assert b"this is a sample mail from Mailroom" in opened(mail.raw, jane, files)


def test_ews_sends_the_signed_and_encrypted_mime_content(app, admin, staff, peer, ca, jane, files):
    server = save(app, admin, with_smime(ews_form(peer), ca.issue(MAILBOX)))
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": JANE}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    [mail] = peer.sent
    assert mail.recipients == [JANE] and mail.mime.get_content_type() == "application/pkcs7-mime"
    assert mail.item_class == "IPM.Note.SMIME"  # as Exchange classes an encrypted message
    assert b"this is a sample mail from Mailroom" in opened(mail.raw, jane, files)


def test_gmail_sends_the_signed_and_encrypted_raw(app, admin, staff, gmail, key, ca, jane, files):
    server = save(app, admin, with_smime(gmail_form(gmail, key), ca.issue(MAILBOX)))
    sent = staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": JANE}, htmx=True).text
    assert "Email server accepted mail for delivery." in sent
    [mail] = gmail.sent
    assert mail.mime.get_content_type() == "application/pkcs7-mime" and mail.mime["To"] == JANE
    assert b"this is a sample mail from Mailroom" in opened(mail.raw, jane, files)


def test_a_signed_only_message_is_classed_as_exchange_classes_it(app, admin, staff, peer, ca, files):
    form = {**with_smime(ews_form(peer), ca.issue(MAILBOX)), "smime_encrypt": ""}
    server = save(app, admin, form)
    staff.post(f"/p/help/servers/{server.id}/sample", {"recipient": JANE}, htmx=True)
    [mail] = peer.sent
    assert mail.item_class == "IPM.Note.SMIME.MultipartSigned" and mail.recipients == [JANE]
    assert b"this is a sample mail from Mailroom" in verify(mail.raw, files / "ca.pem")
