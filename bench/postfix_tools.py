"""Postfix's smtp-sink and smtp-source, the baselines of bench/delivery.py, without installing Postfix.

Debian's `postfix` package is downloaded with `apt-get download` (no root, nothing installed) and
unpacked into bench/tools/postfix (git-ignored) the first time; the two programs run from there
with Postfix's libraries on LD_LIBRARY_PATH.

- smtp-sink: an SMTP server that answers 250 to everything and throws the mail away (ESMTP,
  PIPELINING): the fastest receiver there is, shared by the product and the baselines.
- smtp-source: Postfix's SMTP load generator, in C: `sessions` connections at once, each sending
  messages of `length` bytes one after the other over the same connection (-d).
"""
import glob
import os
import socket
import subprocess
import time
from pathlib import Path

from harness import HOST, Processes

TOOLS = Path(__file__).resolve().parent / "tools"
POSTFIX = TOOLS / "postfix"
LIBRARIES = POSTFIX / "usr/lib/postfix"
SINK = POSTFIX / "usr/sbin/smtp-sink"
SOURCE = POSTFIX / "usr/sbin/smtp-source"


def ensure() -> None:
    """Download and unpack Debian's postfix package into bench/tools/postfix unless it is there."""
    if SINK.exists() and SOURCE.exists():
        return
    TOOLS.mkdir(exist_ok=True)
    if not glob.glob(str(TOOLS / "postfix_*.deb")):
        fetched = subprocess.run(["apt-get", "download", "postfix"], cwd=TOOLS, capture_output=True, text=True)
        if fetched.returncode:
            raise RuntimeError("cannot download Debian's postfix package (apt-get download postfix; an "
                               f"`apt-get update` may be needed first):\n{fetched.stderr}")
    package = sorted(glob.glob(str(TOOLS / "postfix_*.deb")))[-1]
    subprocess.run(["dpkg-deb", "-x", package, str(POSTFIX)], check=True)


def _env() -> dict:
    return {**os.environ, "LD_LIBRARY_PATH": str(LIBRARIES)}


def start_sink(processes: Processes, port: int, log: Path):
    """smtp-sink on 127.0.0.1:port (as root it must drop to a user: nobody)."""
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = processes.start([str(SINK), *user, f"{HOST}:{port}", "256"], log, env=_env())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1) as probe:
                if probe.recv(100).startswith(b"220"):
                    return proc
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    raise RuntimeError(f"smtp-sink did not answer on port {port}:\n{log.read_text(errors='replace')[-2000:]}")


def source(port: int, messages: int, sessions: int, length: int) -> float:
    """smtp-source: `messages` messages of `length` bytes over `sessions` connections at once, each
    kept for the next message (-d); the seconds it took, wall clock."""
    command = [str(SOURCE), "-d", "-s", str(sessions), "-m", str(messages), "-l", str(length),
               "-f", "helpdesk@example.com", "-t", "to@example.org", f"{HOST}:{port}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"smtp-source failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return elapsed
