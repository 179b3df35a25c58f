"""SMTP AUTH NTLM (pyspnego) against a peer that answers as Exchange does (tests/peers/smtp_extras.py)."""
import base64
from datetime import UTC, datetime

from webapp.mail import transport_for
from webapp.mail.auth import PasswordAuth
from webapp.mail.config import ServerConfig
from webapp.mail.envelope import Envelope
from webapp.mail.message import sample_message
from webapp.mail.report import Outcome
from webapp.mail.smtp import Mechanism, Security, SmtpSettings
from tests.peers.smtp_extras import NTLM_DOMAIN, NTLM_PASSWORD, NTLM_USER, client_ca, ntlm_peer, ntlm_users_file  # noqa: F401
from tests.test_mail_smtp import LOOPBACK, SENDER

SMTP = transport_for("smtp")


def _config(peer, mechanism=Mechanism.NTLM, username=None, password=None) -> ServerConfig:
    settings = SmtpSettings(host="localhost", port=peer.port, security=Security.STARTTLS, ca_cert=peer.ca_pem)
    auth = PasswordAuth(username or peer.username, password or peer.password, mechanism)
    return ServerConfig("smtp", SENDER, settings, network=LOOPBACK, auth=auth, timeout=5.0, label="NTLM peer")


def _step(report, name):
    return [s for s in report.steps if s.name == name][-1]


def test_ntlm_signs_in_and_the_transcript_shows_no_ntlm_message(ntlm_peer):
    peer = ntlm_peer()
    report = SMTP.check(_config(peer))

    assert report.ok, report.failure
    auth = _step(report, "Authenticate")
    assert auth.summary == f"signed in as {peer.username} with NTLM"
    assert dict(auth.details)["Offered"] == "NTLM"
    assert peer.ntlm_users == [f"{NTLM_DOMAIN}\\{NTLM_USER}"]
    transcript = report.transcript
    at = transcript.index("C: AUTH NTLM")
    assert transcript[at + 1] == "S: 334 NTLM supported"
    assert transcript[at + 2] == "C: ********" and transcript[at + 4] == "C: ********"
    assert transcript[at + 3].startswith("S: 334 TlRMTVNTUAAC")  # the server's CHALLENGE
    assert transcript[at + 5] == "S: 235 2.7.0 Authentication successful"
    assert not any("TlRMTVNTUAAB" in line or "TlRMTVNTUAAD" in line for line in transcript)
    assert NTLM_PASSWORD not in repr(report)


def test_ntlm_accepts_the_user_principal_name_form(ntlm_peer, ntlm_users_file):
    ntlm_users_file.write_text(f":{NTLM_USER}@corp.example:{NTLM_PASSWORD}\n")
    peer = ntlm_peer()
    report = SMTP.check(_config(peer, username=f"{NTLM_USER}@corp.example"))
    assert report.ok, report.failure


def test_a_wrong_password_is_535_in_words_and_holds_the_mail(ntlm_peer):
    peer = ntlm_peer()
    report = SMTP.check(_config(peer, password="not-the-password"))

    failure = report.failure
    assert failure.name == "Authenticate" and failure.code == 535 and failure.credentials
    assert "rejected the NTLM sign-in" in failure.summary
    assert "DOMAIN\\user" in failure.hint
    assert peer.ntlm_users == []


def test_sending_through_ntlm_delivers(ntlm_peer):
    peer = ntlm_peer()
    envelope = Envelope.of(sample_message(SENDER, "ann@example.test", "Help Desk", "NTLM peer", datetime.now(UTC)))
    receipt = SMTP.send(_config(peer), envelope)
    assert receipt.reply.startswith("250")
    assert [m.rcpt_tos for m in peer.messages] == [["ann@example.test"]]


def test_automatic_takes_ntlm_only_when_nothing_else_is_offered(ntlm_peer):
    only_ntlm = SMTP.check(_config(ntlm_peer(), mechanism=Mechanism.AUTO))
    assert only_ntlm.ok, only_ntlm.failure
    assert dict(_step(only_ntlm, "Authenticate").details)["Mechanism"] == "NTLM"

    both = ntlm_peer(offer_plain=True)
    plain = SMTP.check(_config(both, mechanism=Mechanism.AUTO, username="mailer@example.test",
                               password="s3cret-Pass!"))
    assert plain.ok, plain.failure
    assert dict(_step(plain, "Authenticate").details)["Mechanism"] == "PLAIN"
    assert "NTLM" in dict(_step(plain, "Authenticate").details)["Offered"]


def test_ntlm_chosen_but_not_offered_says_so(smtp_peer):
    peer = smtp_peer("starttls")
    report = SMTP.check(_config(peer))
    assert report.failure.name == "Authenticate"
    assert report.failure.summary.startswith("the server does not offer NTLM")
    assert _step(report, "Authenticate").outcome == Outcome.FAILED


def test_mailroom_waits_for_the_334_as_ms_smtpntlm_shows_it(ntlm_peer):
    peer = ntlm_peer()
    report = SMTP.check(_config(peer))
    assert report.ok
    assert peer.ntlm_flows == ["334 NTLM supported"]
    assert not any(line.startswith("C: AUTH NTLM ") for line in report.transcript)
    assert base64.b64encode(NTLM_PASSWORD.encode()).decode() not in "\n".join(report.transcript)
