"""Keeping secrets out of reports: what a server sends back is checked for them.

The client's own credential lines are never recorded (the transports replace them
wholesale). This is for what comes back: a server that echoes an AUTH line, an error
page quoting a token. A secret is looked for as itself and in base64 at every offset
(so it is found inside a SASL PLAIN blob or an XOAUTH2 string whatever precedes it),
in the standard and the URL-safe alphabet. A base64 word that contains it is hidden
whole, so no partial bits of it remain either.
"""
import base64
import re
from collections.abc import Iterable

REDACTED = "********"
MIN_NEEDLE = 4  # shorter forms would match ordinary text
_WORD = re.compile(r"[A-Za-z0-9+/_=-]{4,}")


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        self._plain: list[str] = []
        self._encoded: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        if not secret or len(secret) < MIN_NEEDLE:
            return
        self._plain.append(secret)
        self._plain.sort(key=len, reverse=True)
        self._encoded |= {needle for needle in base64_forms(secret.encode("utf-8")) if len(needle) >= MIN_NEEDLE}

    def __bool__(self) -> bool:
        return bool(self._plain)

    def leaks(self, text: str) -> bool:
        return bool(self._plain) and (any(s in text for s in self._plain)
                                      or any(n in word for word in _WORD.findall(text) for n in self._encoded))

    def clean(self, text: str) -> str:
        if not self._plain:
            return text
        for secret in self._plain:
            text = text.replace(secret, REDACTED)
        return _WORD.sub(lambda m: REDACTED if any(n in m.group(0) for n in self._encoded) else m.group(0), text)


def base64_forms(secret: bytes) -> set[str]:
    """The base64 characters that depend on `secret` alone, for each of the three alignments
    it can have inside a longer encoded string, in both alphabets."""
    forms = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode("ascii").rstrip("=")
        start = -(-offset * 8 // 6)  # characters touched by the padding bytes in front
        end = ((offset + len(secret)) * 8) // 6  # characters complete without what follows
        core = encoded[start:end]
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return forms
