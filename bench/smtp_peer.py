"""A local SMTP server for Validate to talk to, in its own process, on 127.0.0.1.

    .venv/bin/python bench/smtp_peer.py WORKDIR [--accept]

aiosmtpd with STARTTLS required and AUTH (PLAIN, LOGIN) required, a certificate for
127.0.0.1 and localhost from a fresh trustme CA, as the tests' "starttls" peer
(tests/peers/smtp.py) minus CRAM-MD5. Writes WORKDIR/peer.json once it listens:
{"port", "ca_pem", "username", "password"}; runs until SIGTERM or SIGINT. It refuses DATA (Validate
never sends), unless --accept: then it takes every message and throws it away (the sample mail of
bench/scale.py).
"""
import hmac
import json
import signal
import socket
import ssl
import sys
import threading
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USERNAME = "mailer@example.test"
PASSWORD = "s3cret-Pass!"


class Handler:
    async def handle_DATA(self, server, session, envelope):  # Validate never sends; refuse if anything does
        return "554 5.7.1 The bench peer does not take mail"


class Accepting:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: taken and thrown away"


def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USERNAME.encode()
          and hmac.compare_digest(auth_data.password, PASSWORD.encode()))
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(workdir: Path, accept: bool = False) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    port = free_port()
    controller = Controller(Accepting() if accept else Handler(), hostname="127.0.0.1", port=port, server_hostname="mx.bench.test",
                            tls_context=context, require_starttls=True, authenticator=authenticator,
                            auth_required=True, ready_timeout=10.0)
    controller.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ready = workdir / "peer.json.tmp"
    ready.write_text(json.dumps({"port": port, "ca_pem": ca.cert_pem.bytes().decode(),
                                 "username": USERNAME, "password": PASSWORD}))
    ready.rename(workdir / "peer.json")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), accept="--accept" in sys.argv[2:])
