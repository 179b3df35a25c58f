"""smtplib.SMTP on a socket we connected ourselves, kept to a Deadline, recording a
transcript with authentication redacted by protocol:

- the client's AUTH command keeps only the mechanism name, and every line answering a
  334 challenge is replaced whole, whatever the mechanism and the lengths;
- a server line that carries a secret in any encoding (an echoed AUTH line, say) is
  replaced whole too, and so is every line of a reply a secret runs across; with a secret
  too short to look for, no server line is shown at all (see redact.py);
- a greeting that is not SMTP is described, never echoed.

Time: each read and write gets what is left of the deadline as its socket timeout, and a
Watchdog (deadline.py) shuts the connection down when the deadline is over, TLS or not, so
a server that trickles its replies a byte at a time cannot outlast it. It watches only while
a message's conversation is under way: idle() between messages, rebind() arms it again.
"""
import base64
import socket
from smtplib import SMTP, SMTPServerDisconnected

from ..deadline import Deadline, DeadlineFile, Watchdog, sendall_within
from ..redact import REDACTED, Redactor


class Client(SMTP):
    _watchdog: Watchdog | None = None

    def __init__(self, sock: socket.socket, server_name: str, local_hostname: str,
                 deadline: Deadline, transcript: list[str], redactor: Redactor):
        super().__init__(local_hostname=local_hostname)  # no host: smtplib does not connect
        self.sock, self.server_name = sock, server_name
        self._deadline, self._transcript, self._redactor = deadline, transcript, redactor
        self._last_code: int | None = None
        self._watchdog: Watchdog | None = Watchdog(sock, deadline)

    def send(self, s) -> None:
        if self.sock is None:
            raise SMTPServerDisconnected("the connection is closed")
        self._record_sent(s)
        data = s.encode(self.command_encoding) if isinstance(s, str) else s
        sendall_within(self._deadline, self.sock, data)

    def getreply(self):
        if self.file is None and self.sock is not None:
            self.file = DeadlineFile(self.sock, self._deadline)
        code, text = super().getreply()
        self._last_code = code
        if code == -1:  # not "NNN text": smtplib's way of saying this is not an SMTP server
            self._transcript.append(f"S: <{len(text)} bytes that are not an SMTP reply>")
            return code, text
        lines = text.decode("utf-8", "replace").split("\n")
        for number, shown in enumerate(self._redactor.echo_lines(lines), 1):
            separator = " " if number == len(lines) else "-"
            self._transcript.append(f"S: {code}{separator}{shown}")
        return code, text

    def _record_sent(self, s) -> None:
        if self._last_code == 354:  # the message itself, after DATA
            self._transcript += [f"C: <message, {len(s)} bytes>", "C: ."]
            return
        for line in (s.decode("utf-8", "replace") if isinstance(s, bytes) else s).splitlines():
            self._transcript.append("C: " + self._redact(line))

    def _redact(self, line: str) -> str:
        if self._last_code == 334:  # answering an AUTH challenge
            return REDACTED
        words = line.split()
        if words and words[0].upper() == "AUTH":
            return " ".join(words[:2] + ([REDACTED] if len(words) > 2 else []))
        return REDACTED if self._redactor.leaks(line) else line

    def auth(self, mechanism, authobject, *, initial_response_ok=True):
        """smtplib's auth(), but UTF-8 instead of ASCII (RFC 4616) and never raising on a
        reply: returns (code, text) and the caller checks for 235."""
        initial = authobject() if initial_response_ok else None
        if initial is None:
            code, text = self.docmd("AUTH", mechanism)
            self._auth_challenge_count = 0
        else:
            code, text = self.docmd("AUTH", f"{mechanism} {b64(initial)}")
            self._auth_challenge_count = 1
        while code == 334 and self._auth_challenge_count < 5:
            self._auth_challenge_count += 1
            code, text = self.docmd(b64(authobject(base64.decodebytes(text))))
        return code, text

    def pipeline(self, commands: list[str]) -> None:
        """RFC 2920: several commands in one write; the caller reads their replies in order."""
        for command in commands:
            if "\r" in command or "\n" in command:
                raise ValueError(f"command contains prohibited newline characters: {command!r}")
        self.send("".join(f"{command}\r\n" for command in commands))

    def rebind(self, deadline: Deadline, transcript: list[str], redactor: Redactor) -> None:
        """Go on with another message: its deadline, its transcript, its secrets."""
        self._deadline, self._transcript, self._redactor = deadline, transcript, redactor
        if self.file is not None:
            self.file.close()  # bound to the old deadline; nothing is left unread between messages
            self.file = None
        self.idle()
        if self.sock is not None:
            self._watchdog = Watchdog(self.sock, deadline)

    def idle(self) -> None:
        """Kept open between messages: no deadline runs until rebind()."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        self.idle()
        super().close()

    def start_over(self) -> None:
        """After STARTTLS: RFC 3207 says forget what the server offered before."""
        self.file = None
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def one_line(reply: bytes | str) -> str:
    """A reply's text with its line breaks and runs of spaces as single spaces."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())
