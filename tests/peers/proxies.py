"""Pytest plugin: real proxies on 127.0.0.1, Debian's own servers run as the tests' processes.

    def test_x(proxy_peer):
        proxy = proxy_peer("socks5")          # started now, stopped at teardown
        proxy.kind, proxy.host, proxy.port, proxy.username, proxy.password

Kinds (the program, and what it reproduces):
  socks5        microsocks (Debian `microsocks`): SOCKS5 (RFC 1928) that requires a username and password
                (RFC 1929); a wrong password is answered with status 1 and the connection closed, no
                credentials at all with "no acceptable methods" (0xFF), a closed target with reply 5
                (connection refused). Outgoing connections are bound to 127.0.0.1 (-b), so it reaches
                nothing beyond this machine.
  socks5_open   Dante (Debian `dante-server`, danted): SOCKS5 without sign-in, with rules as an
  socks4        administrator writes them (danted.conf(5)): tunnels only to 127.0.0.0/8, and to the port
                `refused_port` never: a refused target is answered with reply 2 "connection not allowed by
                ruleset" (SOCKS5) or 91 "request rejected or failed" (SOCKS4).
  http          tinyproxy (Debian `tinyproxy`): an HTTP proxy with CONNECT (RFC 9110 9.3.6) that requires
                Basic credentials (`BasicAuth`: 407 Proxy Authentication Required with Proxy-Authenticate
                without them or with wrong ones), tunnels only to 127.0.0.1 and localhost (`Filter`,
                default deny: 403 Filtered), and, when `connect_ports` is given, CONNECT only to those ports
                (`ConnectPort`: 403 Access violation otherwise), as proxies often allow only 443.

`proxy.stop()` ends it early (then nothing listens on its port: connection refused). `proxy.log()` is
what the program wrote (its log of each request).

`which_missing()` names the programs not installed (the Makefile's test-deps installs them).
"""
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .smtp import free_port

USERNAME = "proxy-user"
PASSWORD = "proxy-Pass-7z"  # tinyproxy's BasicAuth takes letters, digits and a few marks (no "!")
PROGRAMS = {"socks5": "microsocks", "socks5_open": "danted", "socks4": "danted", "http": "tinyproxy"}


@dataclass
class ProxyPeer:
    kind: str
    port: int
    username: str = ""
    password: str = ""
    host: str = "127.0.0.1"
    refused_port: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    logfile: Path | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile and self.logfile.exists() else ""


def program(name: str) -> str | None:
    """Its path; Debian puts the daemons in /usr/sbin, which a user's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def which_missing() -> list[str]:
    return sorted({name for name in PROGRAMS.values() if program(name) is None})


def _dante_config(port: int, refused_port: int | None) -> str:
    block = (f"socks block {{ from: 0.0.0.0/0 to: 127.0.0.0/8 port = {refused_port} log: error }}\n"
             if refused_port else "")
    return ("logoutput: stderr\n"
            f"internal: 127.0.0.1 port = {port}\n"
            "external: 127.0.0.1\n"
            "clientmethod: none\n"
            "socksmethod: none\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            f"{block}"
            "socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 log: connect }\n"
            "socks block { from: 0.0.0.0/0 to: 0.0.0.0/0 log: error }\n")


def _tinyproxy_config(port: int, directory: Path, connect_ports) -> str:
    (directory / "filter").write_text("^127\\.0\\.0\\.1$\n^localhost$\n")
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "MaxClients 50", "Allow 127.0.0.1",
             f"BasicAuth {USERNAME} {PASSWORD}", f'Filter "{directory / "filter"}"', "FilterType ere",
             "FilterDefaultDeny Yes", "LogLevel Info"]
    lines += [f"ConnectPort {p}" for p in connect_ports or ()]
    return "\n".join(lines) + "\n"


def _wait_until_listening(peer: ProxyPeer, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if peer.process.poll() is not None:
            raise RuntimeError(f"{PROGRAMS[peer.kind]} ended at start:\n{peer.log()}")
        try:
            socket.create_connection((peer.host, peer.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{PROGRAMS[peer.kind]} does not listen on {peer.port}:\n{peer.log()}")


@pytest.fixture
def proxy_peer(tmp_path):
    missing = which_missing()
    if missing:
        pytest.fail(f"the proxy peers need {', '.join(missing)} (make test-deps installs them)", pytrace=False)
    started: list[ProxyPeer] = []

    def start(kind: str, refused_port: int | None = None, connect_ports=None) -> ProxyPeer:
        port = free_port()
        directory = tmp_path / f"{kind}-{port}"
        directory.mkdir()
        peer = ProxyPeer(kind, port, refused_port=refused_port, logfile=directory / "log")
        if kind == "socks5":
            peer.username, peer.password = USERNAME, PASSWORD
            command = [program("microsocks"), "-i", "127.0.0.1", "-p", str(port), "-b", "127.0.0.1",
                       "-u", USERNAME, "-P", PASSWORD]
        elif kind in ("socks5_open", "socks4"):
            (directory / "danted.conf").write_text(_dante_config(port, refused_port))
            command = [program("danted"), "-f", str(directory / "danted.conf"), "-N", "1", "-p", str(directory / "pid")]
        elif kind == "http":
            peer.username, peer.password = USERNAME, PASSWORD
            (directory / "tinyproxy.conf").write_text(_tinyproxy_config(port, directory, connect_ports))
            command = [program("tinyproxy"), "-d", "-c", str(directory / "tinyproxy.conf")]
        else:
            raise ValueError(kind)
        with open(peer.logfile, "wb") as log:
            peer.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(peer)
        _wait_until_listening(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()
