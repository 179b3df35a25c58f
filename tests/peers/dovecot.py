"""Pytest plugin: Dovecot (Debian's `dovecot-core`, `-pop3d`, `-imapd`) for the mail receiver login,
and an SMTP peer that relays only after such a login (POP-before-SMTP).

    def test_x(dovecot, pop_before_smtp):
        dovecot.ports["pop3s"], dovecot.username, dovecot.password, dovecot.logins()
        smtp = pop_before_smtp()           # an aiosmtpd peer (tests/peers/smtp.py's Peer)

`dovecot` (one per test session) is Dovecot 2.3 itself, run in the foreground (`dovecot -F`) with a
config of its own in a temp dir: POP3 on `pop3` (STARTTLS offered, "STLS") and `pop3s` (implicit TLS),
IMAP on `imap` (STARTTLS) and `imaps`, a certificate from the tests' CA for localhost and 127.0.0.1, one
user in a passwd-file (`{PLAIN}` scheme), `disable_plaintext_auth = yes` (Dovecot counts connections
from this machine as secured, so they may log in without TLS). It answers a wrong password as Dovecot
does ("-ERR [AUTH] Authentication failed.", "NO [AUTHENTICATIONFAILED] Authentication failed.") but at
once: `auth_failure_delay = 0` instead of Dovecot's 2 seconds, to keep the tests quick. `logins()`
counts the successful logins in its log ("pop3-login: Info: Login: user=<...>").

`receiving_mx(verdicts)` stands for the recipient's side: Postfix handing mail to Dovecot's LDA with
OpenDMARC (and SPF/DKIM milters) in front. Like them it writes its verdicts as one
`Authentication-Results: mx.receiving.test; ...` field on top (RFC 8601 §2.2), first removing any such
field that claims its own authserv-id (§5: a forged one), adds Return-Path and Received, and
delivers into the Dovecot user's Maildir (`new/`), where POP3 and IMAP find it. The verdicts are
given by the test (these tests are about reading them back, not about evaluating SPF); `None`
writes no field at all, as a server that checks nothing.

`pop_before_smtp()` is the POP-before-SMTP scheme of the pop-before-smtp daemon and DRAC, which read
the POP/IMAP server's log and let a client that logged in there relay for a while: this peer reads
Dovecot's log too and, stricter than a time window, takes one SMTP session per login, so a test sees
that a login came before each session. Without one, RCPT TO is answered "554 5.7.1 Relay access
denied" (Postfix's words for a client it does not relay for).
"""
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .proxies import program
from .smtp import Peer, Recorder, _CountingController, free_port

USERNAME = "receiver@example.test"
PASSWORD = "recv-Pass-9"
LISTENERS = {"pop3": ("pop3-login", "pop3", False), "pop3s": ("pop3-login", "pop3s", True),
             "imap": ("imap-login", "imap", False), "imaps": ("imap-login", "imaps", True)}


@dataclass
class Dovecot:
    directory: Path
    ports: dict[str, int]
    username: str = USERNAME
    password: str = PASSWORD
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def logfile(self) -> Path:
        return self.directory / "dovecot.log"

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def logins(self) -> int:
        return sum(1 for line in self.log().splitlines() if "-login: Info: Login: user=<" in line)


def _config(directory: Path, ports: dict[str, int]) -> str:
    services = {}
    for name, (service, listener, tls) in LISTENERS.items():
        services.setdefault(service, []).append(
            f"  inet_listener {listener} {{\n    port = {ports[name]}\n" + ("    ssl = yes\n" if tls else "") + "  }\n")
    blocks = "".join(f"service {service} {{\n{''.join(listeners)}}}\n" for service, listeners in services.items())
    return f"""base_dir = {directory}/run
state_dir = {directory}/state
instance_name = mailroom-tests-{directory.name}
log_path = {directory}/dovecot.log
protocols = pop3 imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{directory}/cert.pem
ssl_key = <{directory}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {directory}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={directory}/home/%u
}}
first_valid_uid = 1
mail_location = maildir:~/Maildir
{blocks}service stats {{
  inet_listener http {{
    port = 0
  }}
}}
"""


@pytest.fixture(scope="session")
def dovecot(test_ca):
    dovecot_program = program("dovecot")
    if dovecot_program is None:
        pytest.fail("the mail receiver peer needs Dovecot (make test-deps installs it)", pytrace=False)
    # Dovecot's auth process runs as the user "dovecot": its passwd-file must be in a directory it can
    # reach, which pytest's own (mode 0700, root's) is not.
    directory = Path(tempfile.mkdtemp(prefix="mailroom-dovecot-"))
    directory.chmod(0o755)
    (directory / "home").mkdir()
    (directory / "home").chmod(0o777)
    cert = test_ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    (directory / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    (directory / "passwd").write_text(f"{USERNAME}:{{PLAIN}}{PASSWORD}::::::\n")
    ports = {name: free_port() for name in LISTENERS}
    (directory / "dovecot.conf").write_text(_config(directory, ports))
    peer = Dovecot(directory, ports)
    peer.process = subprocess.Popen([dovecot_program, "-F", "-c", str(directory / "dovecot.conf")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_until_listening(peer)
        yield peer
    finally:
        peer.process.terminate()
        try:
            peer.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            peer.process.kill()
            peer.process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_until_listening(peer: Dovecot, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    pending = set(peer.ports.values())
    while pending and time.monotonic() < end:
        if peer.process.poll() is not None:
            raise RuntimeError(f"dovecot ended at start:\n{peer.log()}")
        for port in list(pending):
            try:
                socket.create_connection((peer.host, port), timeout=1).close()
                pending.discard(port)
            except OSError:
                pass
        time.sleep(0.05)
    if pending:
        raise RuntimeError(f"dovecot does not listen on {sorted(pending)}:\n{peer.log()}")


class PopBeforeSmtp(Recorder):
    """Relays for one SMTP session per login found in Dovecot's log."""

    WAIT = 2.0  # seconds to wait for Dovecot's log process to write a login that just happened

    def __init__(self, messages, dovecot: Dovecot):
        super().__init__(messages)
        self.dovecot = dovecot
        self.used = dovecot.logins()  # the logins before this peer started do not count
        self.lock = threading.Lock()
        self.refused = 0

    def _take_a_login(self) -> bool:
        end = time.monotonic() + self.WAIT
        while True:
            with self.lock:
                if self.dovecot.logins() > self.used:
                    self.used += 1
                    return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        session.relay = getattr(session, "relay", None)
        if session.relay is None:  # decided once per SMTP session, at its first MAIL FROM
            session.relay = self._take_a_login()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not getattr(session, "relay", False):
            self.refused += 1
            return "554 5.7.1 <{}>: Relay access denied".format(address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"


@pytest.fixture
def pop_before_smtp(dovecot, smtp_ca_pem):
    """Factory: an SMTP peer without TLS or AUTH that relays only after a mail receiver login."""
    started: list[Peer] = []

    def start() -> Peer:
        peer = Peer(kind="pop_before_smtp", port=free_port(), ca_pem=smtp_ca_pem)
        peer.handler = PopBeforeSmtp(peer.messages, dovecot)
        controller = _CountingController(peer.handler, peer, hostname="127.0.0.1", port=peer.port,
                                         server_hostname="mx.peer.test", ready_timeout=5.0)
        controller.start()
        peer._stop = controller.stop
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


AUTHSERV_ID = "mx.receiving.test"


class ReceivingMx(Recorder):
    """Delivers into the Dovecot user's Maildir with its Authentication-Results on top."""

    def __init__(self, messages, dovecot: Dovecot, verdicts: str | None):
        super().__init__(messages)
        self.dovecot, self.verdicts = dovecot, verdicts

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        data = envelope.original_content or envelope.content
        head, _, body = data.partition(b"\r\n\r\n")
        kept = [line for line in _unfolded(head) if not _claims_our_id(line)]
        stamp = [f"Return-Path: <{envelope.mail_from}>".encode(),
                 f"Received: from {session.host_name} ([{session.peer[0]}]) by {AUTHSERV_ID}".encode()]
        if self.verdicts is not None:
            stamp.insert(0, f"Authentication-Results: {AUTHSERV_ID}; {self.verdicts}".encode())
        self._deliver(b"\r\n".join(stamp + kept) + b"\r\n\r\n" + body)
        return reply

    def _deliver(self, mail: bytes) -> None:
        maildir = self.dovecot.directory / "home" / self.dovecot.username / "Maildir"
        for part in ("", "new", "cur", "tmp"):
            (maildir / part).mkdir(parents=True, exist_ok=True)
        for path in (maildir.parent, maildir, maildir / "new", maildir / "cur", maildir / "tmp"):
            os.chown(path, 65534, 65534)
        stored = mail.replace(b"\r\n", b"\n")  # Maildir keeps LF; S= is the size on disk (Dovecot checks it)
        name = f"{time.time():.6f}.{secrets.token_hex(6)}.mx,S={len(stored)}"
        (maildir / "tmp" / name).write_bytes(stored)
        os.chown(maildir / "tmp" / name, 65534, 65534)
        (maildir / "tmp" / name).rename(maildir / "new" / name)


def _unfolded(head: bytes) -> list[bytes]:
    """Header fields, each with its continuation lines, as received."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields


def _claims_our_id(field: bytes) -> bool:
    name, _, value = field.partition(b":")
    return name.strip().lower() == b"authentication-results" and \
        value.strip().lower().startswith(AUTHSERV_ID.encode())


@pytest.fixture
def receiving_mx(dovecot, smtp_ca_pem):
    """Factory: receiving_mx(verdicts) -> an SMTP peer (no TLS, no AUTH) delivering into Dovecot."""
    started: list[Peer] = []

    def start(verdicts: str | None = "spf=pass smtp.mailfrom=example.test; dkim=none; "
                                        "dmarc=fail header.from=example.test") -> Peer:
        peer = Peer(kind="receiving_mx", port=free_port(), ca_pem=smtp_ca_pem)
        peer.handler = ReceivingMx(peer.messages, dovecot, verdicts)
        controller = _CountingController(peer.handler, peer, hostname="127.0.0.1", port=peer.port,
                                         server_hostname=AUTHSERV_ID, ready_timeout=5.0)
        controller.start()
        peer._stop = controller.stop
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()
