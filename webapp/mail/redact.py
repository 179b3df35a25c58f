"""Keeping secrets out of reports and logs: what a server sends back is checked for them.

The client's own credential lines are never recorded (the transports replace them
wholesale). This is for what comes back: a server that echoes an AUTH line, an error
page quoting a token. A secret is looked for in every form a server may plausibly send
it back in:

- itself, hex, URL-encoded (%XX, + for a space), HTML- and JSON-escaped;
- base64 at every offset (so it is found inside a SASL PLAIN blob or an XOAUTH2 string
  whatever precedes it), in the standard and the URL-safe alphabet; a base64 word that
  contains it is hidden whole, so no partial bits of it remain either;

each in any case (a server that upper-cases what it quotes) and with white space, line
breaks included, between any two characters (a reply folded over several lines).

A secret shorter than MIN_SECRET cannot be found safely: its forms occur in ordinary text,
and hiding them there would show where it is, while the forms too short to look for would
go through. With such a secret the redactor is `blind`: the server's own text is not shown
at all (`echo` gives NOT_SHOWN in its place) and `clean` hides every copy of what the
server said that a summary or detail quotes.
"""
import base64
import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "********"
MIN_NEEDLE = 4  # shorter forms would match ordinary text
MIN_SECRET = 8  # shorter secrets are not looked for: the server's text is not shown instead
NOT_SHOWN = (f"(the server's text is not shown: a secret shorter than {MIN_SECRET} characters cannot be told "
             "apart from ordinary text)")
HIDDEN = "(not shown)"
_ENHANCED_CODE = re.compile(r"^\s*[245]\.\d{1,3}\.\d{1,3}\s+")  # RFC 3463, repeated on each line of a reply
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_=-")


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        self._needles: dict[str, bool] = {}  # folded form -> hide the whole base64 word around it
        self._quoted: list[tuple[re.Pattern, str]] = []  # server lines a summary may quote, and their stand-in
        self.blind = False
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        if not secret:
            return
        if len(secret) < MIN_SECRET:
            self.blind = True
            return
        if _fold(secret) in self._needles:  # added before (a kept session's token, message after message)
            return
        for form in text_forms(secret):
            self._needles.setdefault(_fold(form), False)
        for form in base64_forms(secret.encode("utf-8")):
            self._needles[_fold(form)] = True
        self._needles = {n: w for n, w in self._needles.items() if len(n) >= MIN_NEEDLE}

    def __bool__(self) -> bool:
        return bool(self._needles) or self.blind

    def leaks(self, text: str) -> bool:
        return bool(self._spans(text))

    def echo(self, text: str) -> str:
        """A line the server sent, as a report may show it."""
        return self.echo_lines([text])[0]

    def echo_lines(self, lines: list[str]) -> list[str]:
        """The lines of one reply as a report may show them: none in blind mode; all when a secret
        runs from one into the next (past the enhanced status code each line repeats); else each
        line that carries a secret. What is hidden here is hidden by `clean` where it is quoted."""
        if self.blind:
            hidden = [True] * len(lines)
        elif len(lines) > 1 and self.leaks("\n".join(_ENHANCED_CODE.sub("", line) for line in lines)):
            hidden = [True] * len(lines)
        else:
            hidden = [self.leaks(line) for line in lines]
        stand_in = NOT_SHOWN if self.blind else REDACTED
        for line, hide in zip(lines, hidden):
            words = line.split()
            if hide and words:
                self._quoted.append((re.compile(r"\s+".join(map(re.escape, words))),
                                     HIDDEN if self.blind else REDACTED))
        return [stand_in if hide else line for line, hide in zip(lines, hidden)]

    def clean(self, text: str) -> str:
        for quoted, stand_in in self._quoted:
            text = quoted.sub(stand_in, text)
        spans = self._spans(text)
        for start, end in reversed(spans):
            text = text[:start] + REDACTED + text[end:]
        return text

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Where a form of a secret is, white space between its characters allowed; merged."""
        if not self._needles or not text:
            return []
        squeezed = "".join(text.split())  # str.split() splits where str.isspace() is true, as `kept` below
        squeezed = _fold(squeezed)
        if not any(needle in squeezed for needle in self._needles):
            return []  # the usual case, found without a step per character
        kept = [i for i, ch in enumerate(text) if not ch.isspace()]
        spans = []
        for needle, whole_word in self._needles.items():
            found = squeezed.find(needle)
            while found != -1:
                start, end = kept[found], kept[found + len(needle) - 1] + 1
                if whole_word:
                    while start > 0 and text[start - 1] in _BASE64:
                        start -= 1
                    while end < len(text) and text[end] in _BASE64:
                        end += 1
                spans.append((start, end))
                found = squeezed.find(needle, found + 1)
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged


def _fold(text: str) -> str:
    """Lower case, one character for one (so positions in the folded text are the original's)."""
    if text.isascii():  # str.lower() maps each ASCII character to one: the usual case, without a step per character
        return text.lower()
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text)


def text_forms(secret: str) -> set[str]:
    """The secret as a server may quote it: itself, hex, URL-encoded, HTML- and JSON-escaped."""
    raw = secret.encode("utf-8")
    return {secret, raw.hex(), quote(secret, safe=""), quote(secret), quote_plus(secret, safe=""),
            html.escape(secret), html.escape(secret, quote=False), json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1]}


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
