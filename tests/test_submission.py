"""SMTP submission: the listener (in this process, on loopback) with real clients, smtplib and swaks,
over STARTTLS and implicit TLS, with PLAIN and LOGIN; every refusal with its reply code; what the
outbox holds afterwards."""
import base64
import hashlib
import platform
import secrets
import shutil
import smtplib
import socket
import sqlite3
import ssl
import subprocess
from dataclasses import dataclass, replace
from email import message_from_bytes
from email import policy as email_policy

import pytest
from aiosmtpd.smtp import SMTP
from limits import parse
from sqlmodel import select

from tests.peers.smtp import free_port
from webapp import db, senders
from webapp.audit import COMMAND_LINE
from webapp.models import OutboundMail, Portal, SmtpCredential
from webapp.submission import credentials
from webapp.submission.credentials import CredentialValues
from webapp.submission.listener import Relay, keep_tls_reads_on_the_heap
from webapp.submission.settings import RelaySettings

SCAN = (b"From: Scanner <scanner@example.com>\r\nTo: Ann <ann@example.org>\r\nCc: bob@example.org\r\n"
        b"Subject: Scan 42\r\n\r\nThe scan.\r\n")


@dataclass
class Login:
    username: str
    password: str
    id: int


@pytest.fixture
def relay(app):
    """Factory: both listeners of a Relay on free loopback ports, stopped at teardown."""
    started: list[Relay] = []

    def start(**overrides) -> Relay:
        settings = replace(RelaySettings.from_config(app.config), starttls_port=free_port(), tls_port=free_port(),
                           hostname="localhost", auth_failure_delay=0.0)
        started.append(Relay(app, replace(settings, **overrides)))
        started[-1].start()
        return started[-1]

    yield start
    for one in started:
        one.stop()


def allow_from(app, portal, *addresses: str) -> None:
    """The portal allows these From addresses (as sender IDs) besides its servers' own."""
    with app.app_context():
        have = {s.address for s in senders.all_of(portal)}
        for address in addresses:
            if address.lower() not in have:
                senders.add(COMMAND_LINE, portal, address)


@pytest.fixture
def login(app, portal):
    """Factory: an SMTP credential of the portal "help" (the scanner's address allowed by default, by the
    credential and, as a sender ID, by the portal)."""
    def make(portal_=None, **values) -> Login:
        values = {"name": "Scanner", "from_addresses": "scanner@example.com", **values}
        allow_from(app, portal_ or portal, *[line.strip() for line in values["from_addresses"].splitlines()
                                            if line.strip() and not line.strip().startswith("@")])
        with app.app_context():
            credential, password = credentials.create(COMMAND_LINE, portal_ or portal, CredentialValues(**values))
        return Login(credential.username, password, credential.id)
    return make


def trust(relay_: Relay) -> ssl.SSLContext:
    """A client that checks the listener's certificate (self-signed: trusted as its own authority)."""
    return ssl.create_default_context(cafile=str(relay_.certificate.cert_file))


def starttls(relay_: Relay) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", relay_.settings.starttls_port, timeout=15)
    client.starttls(context=trust(relay_))
    client.ehlo()
    return client


def implicit_tls(relay_: Relay) -> smtplib.SMTP:
    return smtplib.SMTP_SSL("127.0.0.1", relay_.settings.tls_port, context=trust(relay_), timeout=15)


def submit(client: smtplib.SMTP, data: bytes = SCAN, sender="scanner@example.com",
           recipients=("ann@example.org", "bob@example.org")) -> tuple[int, bytes]:
    """MAIL, RCPT each, DATA: the reply to DATA (or to the first command refused)."""
    code, reply = client.mail(sender)
    if code != 250:
        return code, reply
    for recipient in recipients:
        code, reply = client.rcpt(recipient)
        if code != 250:
            return code, reply
    return client.data(data)


def stored(app) -> list[OutboundMail]:
    with app.app_context():
        return list(db.session().exec(select(OutboundMail).order_by(OutboundMail.id)))


def queued_id(reply: bytes) -> int:
    text = reply.decode()
    assert text.startswith("2.0.0 Ok: queued as "), text
    return int(text.rsplit(" ", 1)[1])


def plain(login_: Login) -> str:
    return base64.b64encode(f"\0{login_.username}\0{login_.password}".encode()).decode()


# -- accepted ------------------------------------------------------------------------------------

def test_starttls_and_plain_store_the_message_before_the_250_that_names_it(app, relay, login, portal):
    listener, account = relay(), login()
    with starttls(listener) as client:
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        client.login(account.username, account.password)
        code, reply = submit(client, recipients=("ann@example.org", "bob@example.org", "hidden@example.org"))
    assert code == 250
    [mail] = stored(app)
    assert mail.id == queued_id(reply)
    assert (mail.portal_id, mail.state, mail.source, mail.submitted_by, mail.client_address) == (
        portal.id, "queued", "smtp", "Scanner", "127.0.0.1")
    assert [r["address"] for r in mail.recipients] == ["ann@example.org", "bob@example.org", "hidden@example.org"]
    assert mail.mail_from == "scanner@example.com" and mail.subject == "Scan 42" and mail.expires_at is not None
    message = message_from_bytes(mail.raw, policy=email_policy.default)
    assert message["Bcc"] == "hidden@example.org"  # only the blind recipient: To and Cc name the others
    assert message["Message-ID"] == mail.message_id and message["Date"] is not None  # RFC 6409 8.2, 8.3
    assert message["From"] == "Scanner <scanner@example.com>" and message["To"] == "Ann <ann@example.org>"
    assert "with ESMTPSA" in message["Received"] and "[127.0.0.1]" in message["Received"]
    assert mail.raw.endswith(b"\r\n\r\nThe scan.\r\n") and mail.size == len(mail.raw)


@pytest.mark.parametrize("initial_response", [True, False])
def test_implicit_tls_and_login(app, relay, login, initial_response):
    listener, account = relay(), login()
    with implicit_tls(listener) as client:
        client.ehlo()
        client.user, client.password = account.username, account.password
        assert client.auth("LOGIN", client.auth_login, initial_response_ok=initial_response)[0] == 235
        code, reply = submit(client)
    assert code == 250 and [m.id for m in stored(app)] == [queued_id(reply)]


SWAKS = shutil.which("swaks")


@pytest.mark.skipif(SWAKS is None, reason="swaks is not installed: `make test` installs Debian's swaks")
@pytest.mark.parametrize("tls, mechanism", [("--tls", "PLAIN"), ("--tls-on-connect", "LOGIN")])
def test_swaks(app, relay, login, tls, mechanism):
    listener, account = relay(), login()
    port = listener.settings.tls_port if tls == "--tls-on-connect" else listener.settings.starttls_port
    result = subprocess.run(
        [SWAKS, "--server", "127.0.0.1", "--port", str(port), tls, "--tls-verify", "--tls-ca-path",
         str(listener.certificate.cert_file), "--auth", mechanism, "--auth-user", account.username,
         "--auth-password", account.password, "--from", "scanner@example.com", "--to", "ann@example.org",
         "--header", "Subject: Sent by swaks", "--body", "Hello from swaks"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    [mail] = stored(app)
    assert f"<~  250 2.0.0 Ok: queued as {mail.id}" in result.stdout
    assert mail.subject == "Sent by swaks" and [r["address"] for r in mail.recipients] == ["ann@example.org"]
    assert account.password not in result.stdout.replace(plain(account), "")  # swaks shows AUTH only encoded


# -- no open relay -------------------------------------------------------------------------------

def test_nothing_is_accepted_without_auth(app, relay):
    with starttls(relay()) as client:
        assert client.mail("scanner@example.com")[0] == 530
        assert client.rcpt("ann@example.org")[0] == 530
        assert client.docmd("DATA")[0] == 530
    assert stored(app) == []


def test_auth_is_neither_offered_nor_taken_before_tls(app, relay, login):
    listener, account = relay(), login()
    with smtplib.SMTP("127.0.0.1", listener.settings.starttls_port, timeout=15) as client:
        client.ehlo()
        assert "starttls" in client.esmtp_features and "auth" not in client.esmtp_features
        assert client.docmd("AUTH", f"PLAIN {plain(account)}")[0] == 538
        assert client.mail("scanner@example.com")[0] == 530


def _reply(reader) -> list[bytes]:
    lines = [reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(reader.readline())
    return lines


def _up_to_starttls(sock: socket.socket, behind: bytes = b"") -> None:
    """The greeting, EHLO, then STARTTLS (with `behind` in the same segment) and its 220."""
    reader = sock.makefile("rb", buffering=0)
    assert _reply(reader)[0].startswith(b"220 ")
    sock.sendall(b"EHLO device.example\r\n")
    assert _reply(reader)[-1].startswith(b"250 ")
    sock.sendall(b"STARTTLS\r\n" + behind)
    assert _reply(reader)[0].startswith(b"220 ")


def test_commands_sent_in_the_clear_behind_starttls_are_never_answered(app, relay):
    """RFC 3207 4.2: what came before the handshake is dropped (else a man in the middle could put
    commands into the encrypted session), and the session starts anew."""
    listener = relay()
    with socket.create_connection(("127.0.0.1", listener.settings.starttls_port), timeout=15) as sock:
        _up_to_starttls(sock, b"NOOP\r\nMAIL FROM:<scanner@example.com>\r\n")
        with trust(listener).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            reader = tls.makefile("rb", buffering=0)
            tls.sendall(b"EHLO device.example\r\n")
            ehlo = _reply(reader)
    assert ehlo[0] == b"250-localhost\r\n"  # EHLO's reply comes first: neither NOOP nor MAIL was answered
    keywords = {line[4:].split()[0] for line in ehlo[1:]}
    assert b"AUTH" in keywords and b"STARTTLS" not in keywords


def test_a_failed_tls_handshake_ends_that_connection_only(app, relay, login):
    listener, account = relay(), login()
    with socket.create_connection(("127.0.0.1", listener.settings.starttls_port), timeout=15) as sock:
        _up_to_starttls(sock)
        sock.sendall(b"EHLO not a TLS hello\r\n" * 20)
        while sock.recv(4096):  # (a TLS alert, perhaps) until the listener hangs up
            pass
    with starttls(listener) as client:
        client.login(account.username, account.password)
        assert submit(client)[0] == 250


def test_starttls_once_tls_is_on_is_refused_and_the_session_goes_on(app, relay, login):
    listener, account = relay(), login()
    for connect in (starttls, implicit_tls):
        with connect(listener) as client:
            client.ehlo()
            assert "starttls" not in client.esmtp_features
            assert client.docmd("STARTTLS") == (454, b"TLS not available")
            client.login(account.username, account.password)
            assert submit(client)[0] == 250
    assert len(stored(app)) == 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
def test_with_glibc_the_listener_keeps_tls_reads_on_the_heap():
    assert keep_tls_reads_on_the_heap()  # (whether it pays is bench/profile_submit.py's to say)


def test_the_addresses_of_mail_and_rcpt_are_read_as_aiosmtpd_reads_them(app, relay):
    smtp = relay().listeners[0].factory()  # parses each argument once, then remembers it
    arguments = ["<scanner@example.com>", "<scanner@example.com> SIZE=100 BODY=8BITMIME", "scanner@example.com",
                 "<>", "", "<scanner@example.com", "<@relay.example:scanner@example.com>", '<"a b"@example.com>',
                 "<a@b@c>", "not an address", "<scanner-with-a-long-local-part@example.com>"]
    for limit in (0, 20):
        smtp.local_part_limit = limit
        for argument in arguments * 2:
            assert smtp._getaddr(argument) == SMTP._getaddr(smtp, argument), (limit, argument)
    assert smtp._getaddr("<scanner-with-a-long-local-part@example.com>") == (None, None)  # over 20


def test_plain_sign_in_only_for_a_credential_that_allows_the_client_network(app, relay, login):
    listener = relay()
    printer = login(plain_networks="127.0.0.0/8")
    other = login(name="Application")
    with smtplib.SMTP("127.0.0.1", listener.settings.starttls_port, timeout=15) as client:
        client.ehlo()
        assert "auth" in client.esmtp_features  # offered: some credential may sign in without TLS from here
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(other.username, other.password)  # the right password, but this one needs TLS
        assert refused.value.smtp_code == 535
        client.login(printer.username, printer.password)
        code, reply = submit(client)
    assert code == 250
    assert "with ESMTPA;" in message_from_bytes(stored(app)[0].raw, policy=email_policy.default)["Received"]


@pytest.mark.parametrize("wrong", ["password", "username", "revoked", "network"])
def test_a_wrong_credential_gets_535_and_nothing_says_which_part(app, relay, login, portal, wrong):
    listener = relay()
    account = login(client_networks="10.0.0.0/8" if wrong == "network" else "")
    username, password = account.username, account.password
    if wrong == "password":
        password = password[::-1]
    elif wrong == "username":
        username = "nobody-" + username
    elif wrong == "revoked":
        with app.app_context():
            credentials.revoke(COMMAND_LINE, portal, db.session().get(SmtpCredential, account.id))
    with starttls(listener) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(username, password)
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error == b"5.7.8 Authentication credentials invalid"
        assert client.mail("scanner@example.com")[0] == 530


def test_failed_sign_ins_are_counted_per_client_address_then_421(app, relay, login):
    listener, account = relay(auth_failures=parse("3 per 15 minutes")), login()
    wrong = Login(account.username, "wrong", account.id)
    with starttls(listener) as client:
        assert [client.docmd("AUTH", f"PLAIN {plain(wrong)}")[0] for _ in range(3)] == [535, 535, 535]
        code, reply = client.docmd("AUTH", f"PLAIN {plain(account)}")  # even the right password, for now
        assert code == 421 and b"Too many failed sign-ins from 127.0.0.1" in reply
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()  # 421: the listener hung up
    with starttls(listener) as client:  # a new connection from the same address: still refused
        assert client.docmd("AUTH", f"PLAIN {plain(account)}")[0] == 421


@pytest.mark.parametrize("storage", ["database", "redis"])
def test_failed_sign_ins_count_across_listener_hosts(app, relay, login, storage):
    if storage == "redis":
        app.config.update(RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/0",
                          RATELIMIT_KEY_PREFIX=f"test-{secrets.token_hex(8)}")
    first, second = relay(auth_failures=parse("2 per 15 minutes")), relay(auth_failures=parse("2 per 15 minutes"))
    account = login()
    wrong = Login(account.username, "wrong", account.id)
    for listener in (first, second):
        with starttls(listener) as client:
            assert client.docmd("AUTH", f"PLAIN {plain(wrong)}")[0] == 535
    with starttls(first) as client:
        assert client.docmd("AUTH", f"PLAIN {plain(account)}")[0] == 421


def test_a_credential_revoked_during_a_session_is_refused_at_the_next_message(app, relay, login, portal):
    listener, account = relay(), login()
    with starttls(listener) as client:
        client.login(account.username, account.password)
        assert submit(client)[0] == 250
        with app.app_context():
            credentials.revoke(COMMAND_LINE, portal, db.session().get(SmtpCredential, account.id))
        code, reply = client.mail("scanner@example.com")
        assert code == 530 and b"revoked" in reply
    assert len(stored(app)) == 1


@pytest.mark.parametrize("gone", ["credential revoked", "portal removed"])
def test_revoked_between_mail_from_and_data_nothing_is_accepted(app, relay, login, portal, gone):
    listener, account = relay(), login()
    with starttls(listener) as client:
        client.login(account.username, account.password)
        client.mail("scanner@example.com")
        client.rcpt("ann@example.org")
        with app.app_context():
            if gone == "portal removed":
                db.session().delete(db.session().get(Portal, portal.id))
                db.session().commit()
            else:
                credentials.revoke(COMMAND_LINE, portal, db.session().get(SmtpCredential, account.id))
        assert client.data(SCAN) == (550, b"5.7.1 This SMTP credential was revoked: nothing was accepted")
    assert stored(app) == []


def test_mail_of_a_credential_goes_into_its_own_portal_only(app, relay, login, make):
    other = make.portal(slug="other", name="Other")
    listener, account = relay(), login(other)
    with implicit_tls(listener) as client:
        client.login(account.username, account.password)
        assert submit(client)[0] == 250
    assert [m.portal_id for m in stored(app)] == [other.id]


# -- From ----------------------------------------------------------------------------------------

def test_a_sender_the_credential_may_not_use_gets_553_and_a_from_field_550(app, relay, login, portal):
    listener, account = relay(), login(from_addresses="scanner@example.com\n@devices.example.com")
    allow_from(app, portal, "copier@devices.example.com")
    with starttls(listener) as client:
        client.login(account.username, account.password)
        code, reply = client.mail("boss@example.com")
        assert code == 553 and b"not a sender address this SMTP credential may use" in reply
        forged = SCAN.replace(b"From: Scanner <scanner@example.com>", b"From: Boss <boss@example.com>")
        code, reply = submit(client, forged)
        assert code == 550 and reply.startswith(b"5.7.1 The From address boss@example.com")
        client.rset()
        code, _ = submit(client, SCAN.replace(b"scanner@example.com", b"copier@devices.example.com"),
                         sender="copier@devices.example.com")  # every address of an allowed domain
        assert code == 250
    assert len(stored(app)) == 1


@pytest.mark.parametrize("head", [
    b"X-Printer : 4711\r\nFrom: Boss <boss@example.com>",  # a space before the colon (RFC 5322's obsolete syntax)
    b"Subject: Scan 42\rFrom: Boss <boss@example.com>",  # a bare CR, which ends a line for many readers
])
def test_every_from_field_of_the_header_section_is_checked(app, relay, login, head):
    """The email package ends the header section at a field with a space before its colon, but the
    fields after it stay in the stored message; a bare CR ends a line for it. Neither hides a From."""
    listener, account = relay(), login()
    with starttls(listener) as client:
        client.login(account.username, account.password)
        client.mail("scanner@example.com")
        client.rcpt("ann@example.org")
        assert client.docmd("DATA")[0] == 354
        client.send(head + b"\r\nTo: Ann <ann@example.org>\r\n\r\nThe scan.\r\n.\r\n")  # as written, bare CR too
        code, reply = client.getreply()
    assert code == 550 and reply.startswith(b"5.7.1 The From address boss@example.com"), reply
    assert stored(app) == []


def test_an_address_field_the_email_package_cannot_parse_is_read_as_written(app, relay, login):
    """`To: undisclosed-recipients:;` folded onto a second line makes the email package's header parser
    raise AttributeError; the field is read with getaddresses() instead, and the message is stored."""
    listener, account = relay(), login()
    odd = SCAN.replace(b"To: Ann <ann@example.org>\r\n", b"To: undisclosed-recipients:;\r\n x\r\n")
    with starttls(listener) as client:
        client.login(account.username, account.password)
        code, reply = submit(client, odd)
    assert code == 250, reply
    [mail] = stored(app)
    assert b"To: undisclosed-recipients:;\r\n x\r\n" in mail.raw and b"Bcc: ann@example.org\r\n" in mail.raw


def test_rewrite_from_puts_the_portals_from_in_place_of_the_devices(app, relay, login, make, portal):
    make.server(portal, from_address="helpdesk@example.com", sender_name="Help Desk", enabled=False)
    make.server(portal, from_address="noreply@example.com", sender_name="Example")
    listener, account = relay(), login(from_policy="rewrite", from_addresses="")
    with starttls(listener) as client:
        client.login(account.username, account.password)
        device = SCAN.replace(b"From: Scanner <scanner@example.com>",
                              b"From: Scanner <scan@printer.local>\r\nSender: scan@printer.local")
        code, reply = submit(client, device, sender="scan@printer.local")
        assert code == 250
        code, reply = submit(client, device.replace(b"From: Scanner <scan@printer.local>\r\n", b""),
                             sender="anything@printer.local")
        assert code == 250
    first, second = (message_from_bytes(m.raw, policy=email_policy.default) for m in stored(app))
    assert first["From"] == "Scanner <noreply@example.com>" and first["Sender"] is None  # the first enabled server
    assert second["From"] == "Example <noreply@example.com>"
    assert {m.mail_from for m in stored(app)} == {"noreply@example.com"}
    assert b"printer.local" not in stored(app)[0].raw.split(b"\r\n\r\n")[0]  # neither From nor Sender


def test_rewrite_from_without_a_server_to_take_it_from_is_a_temporary_refusal(app, relay, login):
    listener, account = relay(), login(from_policy="rewrite", from_addresses="")
    with starttls(listener) as client:
        client.login(account.username, account.password)
        code, reply = submit(client)
    assert code == 451 and b"no enabled mail server with a From address" in reply and stored(app) == []


# -- size, recipients, rates ------------------------------------------------------------------------

def test_size_is_advertised_and_held_to_the_credentials_limit(app, relay, login):
    listener, account = relay(max_message_bytes=50_000), login(max_message_bytes=2_000)
    with starttls(listener) as client:
        assert client.esmtp_features["size"] == "50000"  # before sign-in: the largest any credential may have
        client.login(account.username, account.password)
        client.ehlo()
        assert client.esmtp_features["size"] == "2000"
        assert client.mail("scanner@example.com", ["SIZE=3000"])[0] == 552
        big = SCAN + (b"x" * 70 + b"\r\n") * 50  # lines of 70 characters, over 2000 bytes in all
        assert submit(client, big)[0] == 552
        assert submit(client)[0] == 250
    assert len(stored(app)) == 1


def test_more_recipients_than_a_message_may_have_get_452(app, relay, login):
    listener, account = relay(max_recipients=2), login()
    with starttls(listener) as client:
        client.login(account.username, account.password)
        client.mail("scanner@example.com")
        assert [client.rcpt(f"r{i}@example.org")[0] for i in range(3)] == [250, 250, 452]
        assert client.data(SCAN)[0] == 250
    assert [r["address"] for r in stored(app)[0].recipients] == ["r0@example.org", "r1@example.org"]


def test_rate_limits_hold_across_listeners_sharing_the_database(app, relay, login):
    first, second, account = relay(), relay(), login(per_day=2)
    codes = []
    for listener in (first, second, first):
        with starttls(listener) as client:
            client.login(account.username, account.password)
            codes.append(submit(client))
    assert [code for code, _ in codes] == [250, 250, 450]
    assert codes[2][1] == b"4.7.1 This SMTP credential may send 2 per day: try again later"
    assert len(stored(app)) == 2
    with app.app_context():
        credential = db.session().get(SmtpCredential, account.id)
        assert credential.day_count == 2 and credential.last_client == "127.0.0.1" and credential.last_used_at


def test_a_minute_and_a_day_are_windows_of_the_clock(app, login):
    """Fixed windows: the minute's count starts again in the next minute, the day's does not."""
    account = login(per_minute=2, per_day=3)
    minute = 29_000_000 * 60 + 10  # ten seconds into a minute (and well inside its UTC day)
    with app.app_context():
        snapshot, over = credentials.standing(account.id, minute)
        assert over == ""

        def count(now: float) -> bool:  # committed, as the listener commits it with the message
            counted = credentials.count_message(snapshot, "192.0.2.7", now)
            db.session().commit()
            return counted

        assert [count(minute + s) for s in (0, 1, 2)] == [True, True, False]
        assert credentials.over_limit(snapshot, minute + 3) == "2 per minute"
        assert credentials.standing(account.id, minute + 3) == (snapshot, "2 per minute")
        assert credentials.over_limit(snapshot, minute + 60) == ""
        assert count(minute + 60)  # the next minute
        assert not count(minute + 120)
        assert credentials.over_limit(snapshot, minute + 120) == "3 per day"
        assert credentials.over_limit(snapshot, minute + 86_400) == ""  # the next day


def test_the_daily_limit_is_checked_again_when_the_message_is_counted(app, relay, login):
    """Two sessions pass MAIL FROM while one message is left: only the first DATA is accepted."""
    listener, account = relay(), login(per_day=1)
    with starttls(listener) as one, starttls(listener) as two:
        for client in (one, two):
            client.login(account.username, account.password)
            assert client.mail("scanner@example.com")[0] == 250 and client.rcpt("ann@example.org")[0] == 250
        assert one.data(SCAN)[0] == 250
        assert two.data(SCAN) == (450, b"4.7.1 This SMTP credential may send 1 per day: try again later")
    assert len(stored(app)) == 1


# -- the message -------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, words", [
    (b"Just some text\r\nwithout a header\r\n", b"Line 1 of the message is not a header field"),
    (b"From mbox line Mon Jan 1\r\n" + SCAN, b"Line 1 of the message is not a header field"),
    (SCAN.replace(b"Subject:", b"From: scanner@example.com\r\nSubject:"), b"2 From fields; RFC 5322 allows 1"),
    (SCAN.replace(b"Subject: Scan 42", b"Subject: Scan \xe9t\xe9"), b"bytes that are not UTF-8"),
    (SCAN.replace(b"From: Scanner <scanner@example.com>", b"From: scanner@example.com, ann@example.org"),
     b"exactly one address"),
    (b"From: scanner@example.com\r\nContent-Type: multipart/mixed\r\n\r\nno parts\r\n", b"MIME structure is broken"),
    (b" folded, but first\r\n" + SCAN, b"starts with a continuation line"),
])
def test_a_message_that_cannot_be_sent_faithfully_gets_554(app, relay, login, data, words):
    listener, account = relay(), login()
    with starttls(listener) as client:
        client.login(account.username, account.password)
        code, reply = submit(client, data)
    assert code == 554 and reply.startswith(b"5.6.0") and words in reply, reply
    assert stored(app) == []


def test_a_message_is_completed_as_a_submission_server_does(app, relay, login):
    listener, account = relay(), login()
    sloppy = (b"To: ann@example.org\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\nBcc: never-rcpt@example.org\n\n"
              b"Bare LF line ends.\nand no dot\r\n")
    with starttls(listener) as client:
        client.login(account.username, account.password)
        client.mail("scanner@example.com")
        client.rcpt("ann@example.org")
        client.rcpt("blind@example.org")
        assert client.docmd("DATA")[0] == 354
        client.send(sloppy + b".\r\n")  # as written: smtplib's data() would mend the line ends itself
        code, _ = client.getreply()
    assert code == 250
    [mail] = stored(app)
    message = message_from_bytes(mail.raw, policy=email_policy.default)
    assert message["From"] == "scanner@example.com"  # the envelope sender, which the credential may use
    assert message["Bcc"] == "blind@example.org"  # the RCPT TO list decides, not the device's Bcc field
    assert b"never-rcpt" not in mail.raw
    assert mail.subject == "Grüße" and message["Message-ID"] == mail.message_id
    assert mail.raw.endswith(b"\r\n\r\nBare LF line ends.\r\nand no dot\r\n")
    assert b"\n" not in mail.raw.replace(b"\r\n", b"")


def test_421_when_the_outbox_cannot_be_written_and_nothing_is_half_stored(app, relay, login, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("holds SQLite's write lock to make the outbox unwritable")
    impatient, patient = db.make_engine(database_url, 0.2), app.extensions["mailroom.engine"]
    app.extensions["mailroom.engine"] = impatient  # gives up on a locked database after 0.2 s
    try:
        _outbox_locked_then_free(app, relay(), login(), database_url)
    finally:
        app.extensions["mailroom.engine"] = patient
        impatient.dispose()


def _outbox_locked_then_free(app, listener, account, database_url):
    with starttls(listener) as client:
        client.login(account.username, account.password)
        client.mail("scanner@example.com")
        client.rcpt("ann@example.org")
        blocker = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
        try:
            code, reply = client.data(SCAN)
        finally:
            blocker.rollback()
            blocker.close()
        assert code == 421 and b"cannot store the message right now" in reply
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    assert stored(app) == []
    with starttls(listener) as client:  # the client tries again later: accepted
        client.login(account.username, account.password)
        assert submit(client)[0] == 250
    assert len(stored(app)) == 1


# -- the certificate --------------------------------------------------------------------------------

def test_the_self_signed_certificate_is_private_and_its_fingerprint_is_what_devices_see(app, relay, admin):
    import os
    import stat

    listener = relay()
    for path in (listener.certificate.cert_file, listener.certificate.key_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    with implicit_tls(listener) as client:
        presented = client.sock.getpeercert(binary_form=True)
    expected = ":".join(f"{b:02X}" for b in hashlib.sha256(presented).digest())
    assert listener.certificate.fingerprint == expected
    assert expected in admin.get("/p/help/smtp-credentials").text
    assert relay().certificate.fingerprint == expected  # created once: a second listener uses the same pair


def test_a_configured_certificate_is_used(app, relay, test_ca, tmp_path):
    leaf = test_ca.issue_cert("mail.example.test", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(key_file)
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(cert_file, append=True)
    listener = relay(cert_file=str(cert_file), key_file=str(key_file))
    context = ssl.create_default_context()
    test_ca.configure_trust(context)
    with smtplib.SMTP_SSL("127.0.0.1", listener.settings.tls_port, context=context, timeout=15) as client:
        assert client.ehlo()[0] == 250
        presented = client.sock.getpeercert(binary_form=True)
    assert presented == ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    assert not listener.certificate.self_signed
    assert listener.certificate.fingerprint == ":".join(f"{b:02X}" for b in hashlib.sha256(presented).digest())


# -- behind a load balancer ------------------------------------------------------------------------

def behind_a_balancer(source: str, implicit: bool):
    """An SMTP client whose connection starts with the PROXY protocol header a TCP load balancer
    (HAProxy's send-proxy) writes before anything else: the device's address is `source`."""
    base = smtplib.SMTP_SSL if implicit else smtplib.SMTP

    class Client(base):
        def _get_socket(self, host, port, timeout):
            sock = socket.create_connection((host, port), timeout)
            # Corked, the header and the TLS hello leave in one segment (as a balancer often sends them):
            # the listener reads both at once. Linux sends a corked segment after 200 ms at the latest.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            sock.sendall(f"PROXY TCP4 {source} 127.0.0.1 40000 {port}\r\n".encode())
            if implicit:
                sock = self.context.wrap_socket(sock, server_hostname=host)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            return sock

    return Client


@pytest.mark.parametrize("implicit", [False, True])
def test_behind_a_load_balancer_the_proxy_protocol_gives_the_devices_address(app, relay, login, implicit):
    listener, account = relay(proxy_protocol=True), login(client_networks="192.0.2.0/24")
    port = listener.settings.tls_port if implicit else listener.settings.starttls_port
    client_class = behind_a_balancer("192.0.2.7", implicit)
    with (client_class("127.0.0.1", port, context=trust(listener), timeout=15) if implicit
          else client_class("127.0.0.1", port, timeout=15)) as client:
        if not implicit:
            client.starttls(context=trust(listener))
        client.login(account.username, account.password)  # allowed from 192.0.2.0/24 only
        assert submit(client)[0] == 250
    assert [m.client_address for m in stored(app)] == ["192.0.2.7"]
    if not implicit:  # (a wait of aiosmtpd's PROXY timeout, 10 s: once is enough)
        with pytest.raises(smtplib.SMTPServerDisconnected):  # no PROXY header: not a balancer's connection
            smtplib.SMTP("127.0.0.1", listener.settings.starttls_port, timeout=15)


@pytest.mark.parametrize("option", ["--starttls-port", "--tls-port"])
def test_the_relay_refuses_a_port_it_cannot_listen_on_before_starting(app, option):
    result = app.test_cli_runner().invoke(args=["mail", "relay", option, "0"])
    assert result.exit_code == 2 and "0 is not in the range 1<=x<=65535" in result.output
