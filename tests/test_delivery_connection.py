"""SMTP connection reuse (SmtpTransport.open): consecutive messages share one session, RSET
only after a failed transaction, a session the server closed is established again, each message
has its own deadline and report; PIPELINING (RFC 2920) where the server offers it, with each
recipient's outcome exact. Against real aiosmtpd peers that count their sessions."""
import time

import pytest

from webapp.mail.auth import NoAuth, PasswordAuth
from webapp.mail.config import Sender, ServerConfig
from webapp.mail.envelope import Envelope
from webapp.mail.message import build_message
from webapp.mail.report import DeliveryError
from webapp.mail.smtp import Security, SmtpSettings
from webapp.mail.transport import open_connection

from .peers.smtp import IDLE_TIMEOUT, MESSAGES_PER_SESSION, PLAIN_KINDS
from .test_mail_smtp import LOOPBACK

SENDER = Sender("mailer@example.test", "Portal Mailer")


def config_for(peer, timeout=5.0) -> ServerConfig:
    plain = peer.kind in PLAIN_KINDS
    settings = SmtpSettings(host="localhost", port=peer.port, security=Security.NONE if plain else Security.STARTTLS,
                            ca_cert=peer.ca_pem)
    auth = NoAuth() if plain else PasswordAuth(peer.username, peer.password)
    return ServerConfig("smtp", SENDER, settings, network=LOOPBACK, auth=auth, timeout=timeout, label="Test peer")


def envelope(to="to@example.org", subject="Hello") -> Envelope:
    return Envelope.of(build_message(SENDER, [to], subject, "Body\n"))


def wait_until(condition, seconds=10.0):
    """A hang guard, not a timing: wait for `condition` for at most `seconds`."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "the condition did not come true in time"
        time.sleep(0.02)


def test_consecutive_messages_share_one_session_without_rset_between(smtp_peer):
    peer = smtp_peer("plain")
    connection = open_connection(config_for(peer))
    try:
        receipts = [connection.send(envelope(subject=f"Message {n}")) for n in range(3)]
    finally:
        connection.close()
    assert peer.message_ids() == [r.message_id for r in receipts]
    assert peer.sessions == 1
    first, second = receipts[0].report, receipts[1].report
    assert [s.name for s in first.steps][:3] == ["Message", "Resolve host", "Connect"]
    assert [s.name for s in second.steps] == ["Message", "MAIL FROM", "RCPT TO", "DATA"]
    assert second.transcript[0].startswith("C: mail FROM:<mailer@example.test>")  # the last one went: no RSET
    assert second.transcript[1].startswith("S: 250")  # no PIPELINING offered: one command, one reply
    assert not any("quit" in line.lower() for line in first.transcript + second.transcript)
    wait_until(lambda: peer.active == 0)  # close() said QUIT and the server let go


def test_a_signed_in_session_signs_in_once(smtp_peer):
    peer = smtp_peer("starttls")
    connection = open_connection(config_for(peer))
    try:
        receipts = [connection.send(envelope(subject=f"Message {n}")) for n in range(2)]
    finally:
        connection.close()
    assert len(peer.messages) == 2 and peer.sessions == 1
    assert any(line.startswith("C: AUTH") for line in receipts[0].report.transcript)
    assert not any(line.startswith("C: AUTH") for line in receipts[1].report.transcript)
    assert peer.password not in "\n".join(receipts[0].report.transcript)


def test_a_session_the_server_closed_while_idle_is_established_again(smtp_peer):
    peer = smtp_peer("idle_close")
    connection = open_connection(config_for(peer))
    try:
        connection.send(envelope(subject="Before the pause"))
        wait_until(lambda: peer.active == 0, seconds=IDLE_TIMEOUT + 10)  # the server timed the session out
        later = connection.send(envelope(subject="After the pause"))
    finally:
        connection.close()
    assert [m.message["Subject"] for m in peer.messages] == ["Before the pause", "After the pause"]
    assert peer.sessions == 2
    assert "Connect" in [s.name for s in later.report.steps]  # its report is the new session's


def test_a_session_the_server_ends_with_421_before_the_message_goes_on_over_a_new_one(smtp_peer):
    peer = smtp_peer("message_limit")
    connection = open_connection(config_for(peer))
    try:
        receipts = [connection.send(envelope(subject=f"Message {n}")) for n in range(MESSAGES_PER_SESSION + 1)]
    finally:
        connection.close()
    assert peer.message_ids() == [r.message_id for r in receipts]
    assert peer.sessions == 2
    assert "Connect" in [s.name for s in receipts[-1].report.steps]  # its report is the new session's


@pytest.mark.parametrize("kind", ["refuse_recipients", "pipelining_refuse_recipients"])
def test_a_message_the_server_refuses_keeps_the_session_for_the_next(smtp_peer, kind):
    peer = smtp_peer(kind)
    connection = open_connection(config_for(peer))
    try:
        with pytest.raises(DeliveryError) as refused:
            connection.send(envelope(to="nobody@example.org"))
        accepted = connection.send(envelope(to="someone@example.org"))
    finally:
        connection.close()
    assert refused.value.code == 550 and not refused.value.temporary and refused.value.step == "RCPT TO"
    assert accepted.recipients[0].accepted and peer.sessions == 1
    assert accepted.report.transcript[:2] == ["C: rset", "S: 250 OK"]  # after a failed transaction
    assert [m.rcpt_tos for m in peer.messages] == [["someone@example.org"]]


def test_a_server_offering_pipelining_gets_the_envelope_and_data_in_one_write(smtp_peer):
    peer = smtp_peer("pipelining")
    connection = open_connection(config_for(peer))
    try:
        receipts = [connection.send(envelope(subject=f"Message {n}")) for n in range(3)]
    finally:
        connection.close()
    assert peer.message_ids() == [r.message_id for r in receipts] and peer.sessions == 1
    later = receipts[1].report
    assert [s.name for s in later.steps] == ["Message", "MAIL FROM", "RCPT TO", "DATA"]
    assert [line[:9] for line in later.transcript[:3]] == ["C: mail F", "C: rcpt T", "C: data"]
    assert [line[:6] for line in later.transcript[3:6]] == ["S: 250", "S: 250", "S: 354"]  # then read in order
    assert later.transcript[6].startswith("C: <message, ") and later.transcript[7:9] == ["C: .", later.transcript[8]]
    assert later.transcript[8].startswith("S: 250") and len(later.transcript) == 9
    assert "S: 250-PIPELINING" in receipts[0].report.transcript


def test_pipelined_recipients_each_get_their_own_outcome(smtp_peer):
    peer = smtp_peer("pipelining_refuse_recipients")
    connection = open_connection(config_for(peer))
    message = Envelope.of(build_message(SENDER, ["someone@example.org", "nobody@example.org", "later@example.org"],
                                        "Three", "Body\n"))
    try:
        receipt = connection.send(message)
        again = connection.send(envelope(to="someone@example.org", subject="Next"))
    finally:
        connection.close()
    outcomes = {r.address: (r.accepted, r.code, r.temporary) for r in receipt.recipients}
    assert outcomes == {"someone@example.org": (True, 250, True), "nobody@example.org": (False, 550, False),
                        "later@example.org": (False, 450, True)}
    assert receipt.report.step("RCPT TO").outcome == "warning"
    assert [m.rcpt_tos for m in peer.messages] == [["someone@example.org"], ["someone@example.org"]]
    assert again.recipients[0].accepted and peer.sessions == 1


@pytest.mark.parametrize("kind", ["refuse_sender", "pipelining_refuse_sender"])
def test_a_refused_sender_fails_the_message_and_the_session_stays_in_step(smtp_peer, kind):
    peer = smtp_peer(kind)
    connection = open_connection(config_for(peer))
    try:
        refusals = []
        for n in range(2):
            with pytest.raises(DeliveryError) as refused:
                connection.send(envelope(subject=f"Message {n}"))
            refusals.append(refused.value)
    finally:
        connection.close()
    assert [(r.step, r.code, r.temporary) for r in refusals] == [("MAIL FROM", 550, False)] * 2
    assert peer.messages == [] and peer.sessions == 1
    if kind.startswith("pipelining"):  # the replies to RCPT TO and DATA were read before the next message
        assert sum(line.startswith("S: 503") for line in refusals[0].report.transcript) == 2


def test_a_session_that_failed_midway_is_not_reused(smtp_peer):
    peer = smtp_peer("slow")
    peer.delay = 2.0
    connection = open_connection(config_for(peer, timeout=0.5))
    try:
        with pytest.raises(DeliveryError) as timed_out:
            connection.send(envelope(subject="Too slow"))
        peer.delay = 0
        again = connection.send(envelope(subject="In time"))
    finally:
        connection.close()
    assert timed_out.value.step == "DATA" and timed_out.value.temporary
    assert "Connect" in [s.name for s in again.report.steps]  # a new session, not the one in doubt
    assert [m.message["Subject"] for m in peer.messages] == ["In time"]  # the first went with its session
    assert peer.sessions == 2


def test_a_server_taking_data_after_every_recipient_was_refused_gets_a_lone_dot(smtp_peer):
    peer = smtp_peer("pipelining_data_anyway")
    connection = open_connection(config_for(peer))
    try:
        with pytest.raises(DeliveryError) as refused:
            connection.send(envelope(to="nobody@example.org"))
        accepted = connection.send(envelope(to="someone@example.org"))
    finally:
        connection.close()
    assert (refused.value.step, refused.value.code, refused.value.temporary) == ("RCPT TO", 550, False)
    transcript = refused.value.report.transcript
    assert transcript[transcript.index("S: 354 End data with <CR><LF>.<CR><LF>") + 1:] == [
        "C: <message, 3 bytes>", "C: .", "S: 554 5.5.1 Error: no valid recipients"]  # ".\r\n" alone: no message
    assert accepted.recipients[0].accepted and peer.sessions == 1
    assert [m.rcpt_tos for m in peer.messages] == [["someone@example.org"]]


def test_addresses_are_quoted_as_smtplib_quotes_them():
    """The pipelined commands skip smtplib's parse for plain addresses: the same text either way."""
    import random
    from smtplib import quoteaddr

    from webapp.mail.smtp.steps import PLAIN_ADDRESS, quoted

    addresses = ["to@example.org", "First.Last+tag@sub.example.co.uk", "o'neil@example.org", "a!#$%&*/=?^_`{|}~-@x",
                 "a..b@example.org", ".a@example.org", "a.@example.org", "a@b..c", "a@-b.c", "a@b-.c", "a@[127.0.0.1]",
                 '"quoted local"@example.org', "Name <a@example.org>", "a@example.org (comment)", "a b@example.org",
                 "a@example.org.", "@example.org", "a@", "", "<>", "a@ex ample.org", "ä@example.org", "a@exämple.org",
                 "a\\b@example.org", "a(b)@example.org", "a,b@example.org", "a;b@example.org", "a:b@example.org"]
    rng = random.Random(7)

    def part(alphabet):
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    odd = "@'\"()<>,;:\\[] !#%ä"  # a sprinkle of everything else
    addresses += [part("ab.-_+'" + odd * (n % 2)) + "@" + part("ab.-" + odd * (n % 3 == 0)) for n in range(3000)]
    for address in addresses:
        assert quoted(address) == quoteaddr(address), address
    assert sum(bool(PLAIN_ADDRESS.fullmatch(a)) for a in addresses) > 300  # the fast path was taken, and agreed
