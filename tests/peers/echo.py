"""Pytest plugin: SMTP servers on 127.0.0.1 that misbehave on purpose.

    echo_peer()       plain SMTP (no TLS) offering AUTH PLAIN LOGIN CRAM-MD5 XOAUTH2 that echoes every
                      client line back inside its replies, as a careless or hostile server does; each
                      authentication ends in a 535 that quotes everything the client sent, and the
                      password it decoded (PLAIN, LOGIN) in hex, URL-encoded, upper-cased and split over
                      two reply lines.
                      peer.port, peer.lines (what clients sent), peer.connections
    banner_peer(text) a TCP listener that greets with `text` (e.g. an SSH banner) and closes.
    listener()        accepts connections, counts them, says nothing (to prove none was made).
"""
import base64
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest


@dataclass
class EchoPeer:
    port: int
    lines: list[str] = field(default_factory=list)
    connections: int = 0
    host: str = "127.0.0.1"
    username: str = "mailer@example.test"  # what a test signs in with (the peer accepts nobody)
    password: str = "Echo-Pass-1"
    ca_pem: str = ""


class _Server:
    def __init__(self, handle):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._handle, self._stopping = handle, threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"peer-{self.port}")
        self._thread.start()

    def _serve(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        with conn:
            conn.settimeout(10)
            try:
                self._handle(conn)
            except OSError:
                pass

    def stop(self):
        self._stopping.set()
        self._thread.join()
        self.sock.close()


def _echo_conversation(peer: EchoPeer):
    def handle(conn):
        peer.connections += 1
        reader = conn.makefile("rb")
        conn.sendall(b"220 echo.test ESMTP careless\r\n")
        while True:
            raw = reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            peer.lines.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                conn.sendall(f"250-echo.test hello {line}\r\n250-AUTH PLAIN LOGIN CRAM-MD5 XOAUTH2\r\n250 8BITMIME\r\n"
                             .encode())
            elif verb == "AUTH":
                words = line.split()
                mechanism = words[1].upper() if len(words) > 1 else ""
                said = [line]

                def ask(prompt: bytes):
                    conn.sendall(b"334 " + prompt + b"\r\n")
                    answer = reader.readline().decode("utf-8", "replace").rstrip("\r\n")
                    peer.lines.append(answer)
                    said.append(answer)

                if mechanism == "LOGIN":
                    if len(words) == 2:
                        ask(b"VXNlcm5hbWU6")
                    ask(b"UGFzc3dvcmQ6")
                elif mechanism == "CRAM-MD5":
                    ask(base64.b64encode(b"<1.2@echo.test>"))
                elif len(words) == 2:  # PLAIN or XOAUTH2 without an initial response
                    ask(b"")
                decoded = "".join(f"535-5.7.8 {line}\r\n" for line in _decoded_forms(mechanism, said))
                conn.sendall(f"535-5.7.8 Authentication failed for: {' | '.join(said)}\r\n{decoded}"
                             f"535 5.7.8 you sent {said[-1]}\r\n".encode())
            elif verb == "QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(f"502 5.5.2 not understood: {line}\r\n".encode())
    return handle


def _decoded_forms(mechanism: str, said: list[str]) -> list[str]:
    """The password the client sent, as a server that decodes and quotes it might show it."""
    try:
        if mechanism == "PLAIN":
            blob = said[0].split()[2] if len(said[0].split()) > 2 else said[-1]
            password = base64.b64decode(blob).split(b"\0")[2].decode()
        elif mechanism == "LOGIN":
            password = base64.b64decode(said[-1]).decode()
        else:
            return []
    except (ValueError, IndexError, UnicodeDecodeError):
        return []
    half = len(password) // 2
    return [f"hex {password.encode().hex()}", f"url {quote(password, safe='')}", f"upper {password.upper()}",
            f"split {password[:half]}", f"{password[half:]} (end)"]


@pytest.fixture
def echo_peer():
    servers = []

    def start() -> EchoPeer:
        peer = EchoPeer(port=0)
        server = _Server(_echo_conversation(peer))
        peer.port = server.port
        servers.append(server)
        return peer

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def banner_peer():
    servers = []

    def start(text: str) -> EchoPeer:
        peer = EchoPeer(port=0)

        def handle(conn):
            peer.connections += 1
            conn.sendall(text.encode() + b"\r\n")
            conn.recv(1024)

        server = _Server(handle)
        peer.port = server.port
        servers.append(server)
        return peer

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def listener():
    servers = []

    def start() -> EchoPeer:
        peer = EchoPeer(port=0)

        def handle(conn):
            peer.connections += 1
            conn.recv(1024)

        server = _Server(handle)
        peer.port = server.port
        servers.append(server)
        return peer

    yield start
    for server in servers:
        server.stop()
