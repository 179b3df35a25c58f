"""SMTP transcripts kept on disk, per server: one JSON object per conversation (one line each), appended
under a file lock, with size-based rotation (`smtp-server-<id>.log`, then `.1` … `.<backups>`).

What is written is the report's transcript, which already has the client's AUTH arguments and every
line answering a 334 replaced, and the message as "<message, N bytes>" (smtp/client.py). Here each line
is cleaned once more by the session's Redactor (a secret in any encoding), and the server's 334
challenges are replaced too, so no part of a SASL or NTLM exchange is kept. One JSON line per
conversation means a server's text can never pass for the start of another entry.
"""
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .redact import REDACTED, Redactor
from .report import Report

MAX_BYTES = 256 * 1024  # per file before it rotates
BACKUPS = 3  # rotated files kept besides the current one
MAX_LINES = 400  # per conversation; the rest is counted, not kept
MAX_LINE = 500  # characters of one transcript line (an entry stays below a file's size)


@dataclass(frozen=True)
class Transcript:
    at: datetime
    kind: str  # "check" | "send"
    server: str  # host:port
    ok: bool
    summary: str
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TranscriptLog:
    path: Path  # the current file; rotated ones beside it
    max_bytes: int = MAX_BYTES
    backups: int = BACKUPS

    def write(self, report: Report, kind: str, server: str, redactor: Redactor) -> None:
        failure = report.failure
        entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "kind": kind, "server": server,
                 "ok": report.ok, "summary": redactor.clean(f"{failure.name}: {failure.summary}" if failure
                                                           else "no step failed"),
                 "lines": _cleaned(report.transcript, redactor)}
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(lock_fd, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                    self._rotate()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "ab") as out:
                    out.write(data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _rotate(self) -> None:
        for number in range(self.backups, 0, -1):
            older = self._file(number - 1)
            if older.exists():
                os.replace(older, self._file(number))

    def _file(self, number: int) -> Path:
        return self.path if number == 0 else self.path.with_name(f"{self.path.name}.{number}")

    def last(self, count: int) -> list[Transcript]:
        """The newest `count` transcripts, newest first (the files are bounded: at most
        (backups + 1) * max_bytes are read)."""
        found: list[Transcript] = []
        for number in range(self.backups + 1):
            for entry in _entries(self._file(number)):
                found.append(entry)
                if len(found) >= count:
                    return found
        return found


def _cleaned(lines: list[str], redactor: Redactor) -> list[str]:
    kept = []
    for line in lines[:MAX_LINES]:
        if line.startswith("S: 334 ") or line.startswith("S: 334-"):
            line = f"S: 334 {REDACTED}"
        kept.append(redactor.clean(line)[:MAX_LINE])
    if len(lines) > MAX_LINES:
        kept.append(f"({len(lines) - MAX_LINES} more lines not kept)")
    return kept


def _entries(path: Path) -> Iterator[Transcript]:
    """A file's transcripts, newest first; a line that is not one (cut off, edited) is passed over."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return
    for raw in reversed(text.splitlines()):
        try:
            entry = json.loads(raw)
            yield Transcript(at=datetime.fromisoformat(entry["at"]), kind=str(entry["kind"]),
                             server=str(entry["server"]), ok=bool(entry["ok"]), summary=str(entry["summary"]),
                             lines=[str(line) for line in entry["lines"]])
        except (ValueError, KeyError, TypeError):
            continue


def log_path(logs: Path, server_id: int) -> Path:
    return logs / f"smtp-server-{int(server_id)}.log"
