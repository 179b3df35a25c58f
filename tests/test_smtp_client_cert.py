"""The SMTP client certificate against peers whose TLS context asks every client for one
(tests/peers/smtp_extras.py: CERT_REQUIRED or CERT_OPTIONAL, client certificates from their own trustme CA)."""
from dataclasses import replace

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from webapp.mail import transport_for
from webapp.mail.client_cert import ClientCertificate, Unreadable, read_upload
from webapp.mail.config import ServerConfig
from webapp.mail.auth import NoAuth, PasswordAuth
from webapp.mail.report import Outcome
from webapp.mail.smtp import Security, SmtpSettings
from tests.peers.smtp_extras import client_ca, client_cert_peer  # noqa: F401
from tests.test_mail_smtp import LOOPBACK, SENDER

SMTP = transport_for("smtp")


def leaf_pem(ca: trustme.CA, name: str = "portal-mailer") -> bytes:
    leaf = ca.issue_cert(f"{name}.clients.test", common_name=name)
    return leaf.private_key_and_cert_chain_pem.bytes()


def _config(peer, cert: ClientCertificate | None, security: str = "tls") -> ServerConfig:
    settings = SmtpSettings(host="localhost", port=peer.port, ca_cert=peer.ca_pem,
                            security=Security.TLS if security == "tls" else Security.STARTTLS)
    return ServerConfig("smtp", SENDER, settings, network=LOOPBACK, auth=NoAuth(), timeout=5.0, label="peer",
                        client_cert=cert)


def _step(report, name):
    return [s for s in report.steps if s.name == name][-1]


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_a_required_certificate_is_asked_for_sent_and_accepted(client_cert_peer, client_ca, security):
    peer = client_cert_peer("required", security)
    cert = read_upload(leaf_pem(client_ca))
    subject = cert.facts()["subject"]
    assert subject.startswith("CN=portal-mailer,")
    report = SMTP.check(_config(peer, cert, security))

    assert report.ok, report.failure
    tls = dict(_step(report, "TLS").details)
    assert tls["Client certificate"] == f"the server asked for one; Mailroom sent {subject}"
    accepted = _step(report, "Client certificate")
    assert accepted.outcome == Outcome.PASSED
    assert accepted.summary == f"the server asked for a client certificate and accepted {subject}"
    assert [s["commonName"] for s in peer.client_subjects] == ["portal-mailer"]
    names = [s.name for s in report.steps]
    assert names.index("Client certificate") > names.index("TLS")


def test_without_a_certificate_a_server_that_requires_one_says_so(client_cert_peer):
    peer = client_cert_peer("required")
    report = SMTP.check(_config(peer, None))

    assert not report.ok
    # with an alert (TLS 1.3's certificate_required) or, as Python's asyncio server does, by closing at once
    assert report.failure.summary in (
        "the server requires a client certificate, and none is configured",
        "the server closed the connection right after a TLS handshake in which it asked for a client certificate, "
        "and none is configured: it most likely requires one")
    assert "Client certificate" in report.failure.hint
    assert dict(_step(report, "TLS").details)["Client certificate"] == "the server asked for one; none is configured"
    assert peer.client_subjects == []


def test_a_certificate_from_another_authority_is_refused_in_words(client_cert_peer):
    peer = client_cert_peer("required")
    stranger = trustme.CA()
    report = SMTP.check(_config(peer, read_upload(leaf_pem(stranger, "stranger"))))

    failure = report.failure
    # the alert (unknown_ca), or only the connection's end when asyncio closes before the alert is read
    assert failure.summary.startswith(("the server refused the client certificate CN=stranger,",
                                       "the server closed the connection right after the TLS handshake in which "
                                       "it got the client certificate CN=stranger,"))
    assert failure.summary.endswith((": it does not trust the certificate's issuer", ": it most likely refused it"))
    assert failure.credentials
    assert peer.client_subjects == []


def test_an_optional_request_is_reported_and_the_certificate_accepted(client_cert_peer, client_ca):
    peer = client_cert_peer("optional", "starttls")
    without = SMTP.check(_config(peer, None, "starttls"))
    assert without.ok, without.failure
    assert dict(_step(without, "TLS").details)["Client certificate"] == "the server asked for one; none is configured"

    with_cert = SMTP.check(_config(peer, read_upload(leaf_pem(client_ca)), "starttls"))
    assert with_cert.ok and _step(with_cert, "Client certificate").outcome == Outcome.PASSED
    assert [s["commonName"] for s in peer.client_subjects] == ["portal-mailer"]


def test_a_server_that_does_not_ask_gets_a_warning(smtp_peer, client_ca):
    peer = smtp_peer("tls")
    config = replace(_config(peer, read_upload(leaf_pem(client_ca))), auth=PasswordAuth(peer.username, peer.password))
    report = SMTP.check(config)
    assert report.ok, report.failure
    step = _step(report, "Client certificate")
    assert step.outcome == Outcome.WARNING
    assert step.summary.startswith("the server did not ask for a client certificate (no CertificateRequest")
    assert dict(_step(report, "TLS").details)["Client certificate"] == \
        "the server did not ask for one (the configured one was not sent)"


def test_pkcs12_with_a_password_and_its_mistakes(client_ca):
    leaf = client_ca.issue_cert("p12.clients.test", common_name="p12 client")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    p12 = pkcs12.serialize_key_and_certificates(b"mailer", key, cert, None,
                                                serialization.BestAvailableEncryption(b"p12-pass"))
    bundle = read_upload(p12, "p12-pass")
    assert bundle.facts()["subject"].startswith("CN=p12 client,")
    assert "PRIVATE KEY" in bundle.key_pem and "ENCRYPTED" not in bundle.key_pem
    with pytest.raises(Unreadable, match="does not open with this password"):
        read_upload(p12, "wrong")
    with pytest.raises(Unreadable, match="enter the certificate's password"):
        read_upload(p12)
    encrypted_pem = leaf.cert_chain_pems[0].bytes() + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    assert read_upload(encrypted_pem, "pw").facts() == bundle.facts()
    with pytest.raises(Unreadable, match="encrypted: enter its password"):
        read_upload(encrypted_pem)
    with pytest.raises(Unreadable, match="no private key"):
        read_upload(leaf.cert_chain_pems[0].bytes())
    other = client_ca.issue_cert("other.clients.test")
    with pytest.raises(Unreadable, match="does not belong to the certificate"):
        read_upload(leaf.cert_chain_pems[0].bytes() + other.private_key_pem.bytes())
