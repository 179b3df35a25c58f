import re
import unicodedata
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.utils import getaddresses

import pytest

from webapp.mail.config import Sender
from webapp.mail.envelope import Envelope, sample_envelope
from webapp.mail.message import (Mailbox, build_message, compose, control_character_problem, envelope_address,
                                 sample_message)

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def reparsed(message):
    return message_from_bytes(message.as_bytes(), policy=policy.default)


def test_headers():
    sender = Sender("mailer@example.test", "Portal Mailer", reply_to="help@example.test")
    message = build_message(sender, ["ann@example.org", "Bob <bob@example.org>"], "Hello",
                            "Body\n", cc=["cc@example.org"], bcc=["hidden@example.org"], now=NOW)

    assert message["From"] == "Portal Mailer <mailer@example.test>"
    assert message["Reply-To"] == "help@example.test"
    assert message["To"] == "ann@example.org, Bob <bob@example.org>"
    assert message["Cc"] == "cc@example.org"
    assert message["Bcc"] == "hidden@example.org"  # kept for the envelope; send() drops it
    assert message["Subject"] == "Hello"
    assert message["Date"] == "Mon, 06 May 2024 07:08:09 +0000"
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@example.test>")
    assert message.get_content() == "Body\n"


def test_no_reply_to_unless_set():
    message = build_message(Sender("a@example.test"), ["b@example.org"], "s", "t")
    assert message["Reply-To"] is None
    assert message["From"] == "a@example.test"


def test_message_id_domain_and_naive_time():
    message = build_message(Sender("a@example.test"), ["b@example.org"], "s", "t",
                            message_id_domain="portal.example", now=datetime(2024, 1, 2, 3, 4, 5))
    assert message["Message-ID"].endswith("@portal.example>")
    assert message["Date"] == "Tue, 02 Jan 2024 03:04:05 +0000"


def test_non_ascii_sender_name_is_encoded():
    message = build_message(Sender("mailer@example.test", "Jörg Müller"), ["b@example.org"],
                            "Grüße", "Hällo\n")
    raw = message.as_bytes()

    assert raw.isascii()
    assert b"=?utf-8?" in raw
    again = reparsed(message)
    assert again["From"] == "Jörg Müller <mailer@example.test>"
    assert again["Subject"] == "Grüße"
    assert again.get_content() == "Hällo\n"


def test_idn_address_uses_ascii_domain():
    message = build_message(Sender("admin@bücher.example", "Admin"), ["info@münchen.example"],
                            "s", "t")

    assert message["From"] == "Admin <admin@xn--bcher-kva.example>"
    assert message["To"] == "info@xn--mnchen-3ya.example"
    assert message["Message-ID"].endswith("@xn--bcher-kva.example>")
    assert message.as_bytes().isascii()
    assert envelope_address("admin@bücher.example") == "admin@xn--bcher-kva.example"


def test_non_ascii_local_part_needs_smtputf8_policy():
    message = build_message(Sender("jörg@example.test"), ["b@example.org"], "s", "t")
    assert message.policy.utf8
    assert "jörg@example.test".encode() in message.as_bytes()


@pytest.mark.parametrize("field", ["subject", "name", "address", "reply_to", "to", "cc", "bcc"])
@pytest.mark.parametrize("evil", ["\r\n", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\x00"])
def test_line_breaks_in_header_values_are_rejected(field, evil):
    injected = f"x{evil}Bcc: victim@example.org"
    sender = Sender(
        address=injected if field == "address" else "a@example.test",
        name=injected if field == "name" else "",
        reply_to=injected if field == "reply_to" else "",
    )
    kwargs = {field: [injected]} if field in ("cc", "bcc") else {}
    to = [injected] if field == "to" else ["b@example.org"]
    with pytest.raises(ValueError):
        build_message(sender, to, injected if field == "subject" else "s", "t", **kwargs)


def test_not_an_address_is_rejected():
    with pytest.raises(ValueError):
        build_message(Sender("a@example.test"), ["not an address"], "s", "t")


def test_sample_message():
    sender = Sender("mailer@example.test", "Portal")
    now = datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    message = sample_message(sender, "admin@example.org", "City Portal", "Office 365", now)

    assert message["Subject"] == "Mailroom sample mail from City Portal via Office 365"
    assert message["To"] == "admin@example.org"
    assert message["From"] == "Portal <mailer@example.test>"
    assert message["Date"] == "Mon, 06 May 2024 07:08:09 +0000"
    body = message.get_content()
    assert "City Portal" in body and "Office 365" in body
    assert "2024-05-06 07:08:09 UTC" in body


def test_sample_message_rejects_line_breaks_in_names():
    with pytest.raises(ValueError):
        sample_message(Sender("a@example.test"), "b@example.org", "Portal\nBcc: x@y.z", "S", NOW)


# Text that looks like an RFC 2047 encoded word, typed as a name or a subject, reaches mail clients as
# typed: the produced bytes are parsed with the email package, each header decoded as RFC 2047 says
# (addresses first, then each display name: what mail clients do), and no header appears that was not set.
EVIL = "=?utf-8?q?Evil=0D=0ABcc:_victim@example.org?="
LOOK_ALIKES = {
    "encoded-word": EVIL,
    "base64-encoded-word": "=?utf-8?b?RXZpbA0KQmNjOiB2aWN0aW1AZXhhbXBsZS5vcmc=?=",
    "upper-case": EVIL.upper(),
    "after-a-long-name": "A" * 60 + " " + EVIL,  # long enough to be folded
    "after-many-words": "x " * 40 + EVIL,
    "at-a-fold": "Evil " + "y" * 66 + "=?utf-8?q?Z?=",  # "=?" lands where a line would be folded
    "with-non-ascii": "Jörg " + EVIL,
    "non-ascii-long": " ".join(["Bücher Café"] * 8),
    "spaces-kept": "Jörg  Müller   und " * 5 + "x",
    "ascii-200": "s" * 200,
}


def as_sent(message, linesep: str) -> bytes:
    return message.as_bytes(policy=message.policy.clone(linesep=linesep))


def names_in(raw: bytes, field: str) -> list[tuple[str, str]]:
    value = message_from_bytes(raw, policy=policy.compat32)[field]
    return [(str(make_header(decode_header(name))), address) for name, address in getaddresses([value])]


def assert_no_header_added(message, raw: bytes) -> None:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert sorted(k.lower() for k in parsed.keys()) == sorted(k.lower() for k in message.keys())
    for field in ("From", "Reply-To", "To", "Cc"):
        if parsed[field] is not None:  # the modern parser reads it, and no name holds a line break
            assert not any("\r" in a.display_name or "\n" in a.display_name for a in parsed[field].addresses)


@pytest.mark.parametrize("linesep", ["\r\n", "\n"])
@pytest.mark.parametrize("typed", list(LOOK_ALIKES.values()), ids=list(LOOK_ALIKES))
def test_a_sender_name_that_looks_encoded_is_decoded_as_typed(typed, linesep):
    message = build_message(Sender("mailer@example.test", typed), ["b@example.org"], "s", "t\n")
    raw = as_sent(message, linesep)
    assert names_in(raw, "From") == [(typed, "mailer@example.test")]
    assert_no_header_added(message, raw)


@pytest.mark.parametrize("field", ["reply_to", "to", "cc"])
@pytest.mark.parametrize("typed", list(LOOK_ALIKES.values()), ids=list(LOOK_ALIKES))
def test_display_names_of_reply_to_and_recipients_are_decoded_as_typed(typed, field):
    named = f'"{typed}" <{field}@example.org>'
    sender = Sender("mailer@example.test", "Help", reply_to=named if field == "reply_to" else "")
    to = [named, '"Plain, Name" <p@example.org>'] if field == "to" else ["b@example.org"]
    cc = [named, '"Plain, Name" <p@example.org>'] if field == "cc" else []
    message = build_message(sender, to, "s", "t\n", cc=cc)
    raw = as_sent(message, "\r\n")
    header = {"reply_to": "Reply-To", "to": "To", "cc": "Cc"}[field]
    expected = [(typed, f"{field}@example.org")] + ([("Plain, Name", "p@example.org")] if field != "reply_to" else [])
    assert names_in(raw, header) == expected
    assert_no_header_added(message, raw)


@pytest.mark.parametrize("typed", list(LOOK_ALIKES.values()), ids=list(LOOK_ALIKES))
def test_a_subject_that_looks_encoded_is_decoded_as_typed(typed):
    message = build_message(Sender("mailer@example.test"), ["b@example.org"], typed, "t\n")
    raw = as_sent(message, "\r\n")
    subject = message_from_bytes(raw, policy=policy.compat32)["Subject"]
    assert str(make_header(decode_header(subject))) == typed
    assert_no_header_added(message, raw)


# Non-ASCII text the email package would fold into encoded words with the space between two of them
# outside both, where every RFC 2047 decoder drops it: the failover notice's subject, with the
# alternate server's name in typographic quotes, arrived as "“Alternaterelay”".
SPACE_AT_A_FOLD = {
    "notice-subject": "[Mailroom] Help Desk: mail goes via the alternate server “Alternate relay”",
    "quoted-words": "Ticket 4711 of the Help Desk of the City of Example: “Printer on floor 2” fixed",
    "many-words": "Ihr Auftrag für die Abteilung Öffentlichkeitsarbeit „Stadtfest 2026“ ist bestätigt",
}


def decoded_as_clients_do(raw: bytes, field: str) -> list[str]:
    modern = str(message_from_bytes(raw, policy=policy.default)[field])
    classic = str(make_header(decode_header(message_from_bytes(raw, policy=policy.compat32)[field])))
    return [modern, classic]


@pytest.mark.parametrize("typed", list(SPACE_AT_A_FOLD.values()), ids=list(SPACE_AT_A_FOLD))
def test_a_non_ascii_subject_keeps_its_spaces(typed):
    message = build_message(Sender("mailer@example.test"), ["b@example.org"], typed, "t\n")
    raw = as_sent(message, "\r\n")
    assert decoded_as_clients_do(raw, "Subject") == [typed, typed]
    assert_no_header_added(message, raw)


@pytest.mark.parametrize("typed", list(SPACE_AT_A_FOLD.values()), ids=list(SPACE_AT_A_FOLD))
def test_a_composed_subject_and_header_keep_their_spaces(typed):
    message = compose(Mailbox("mailer@example.test"), [Mailbox("b@example.org")], typed, text="t",
                      headers=[("X-Ticket-Title", typed)])
    raw = as_sent(message, "\r\n")
    assert decoded_as_clients_do(raw, "Subject") == [typed, typed]
    assert decoded_as_clients_do(raw, "X-Ticket-Title") == [typed, typed]


def test_an_smtputf8_message_carries_its_subject_as_it_is():
    typed = SPACE_AT_A_FOLD["notice-subject"]
    message = compose(Mailbox("jörg@example.test"), [Mailbox("b@example.org")], typed, text="t")
    raw = as_sent(message, "\r\n")
    assert ("Subject: " + typed).encode() in raw.replace(b":\r\n ", b": ")
    assert b"=?utf-8?" not in raw  # UTF-8 as it is, no encoded words


def test_control_characters_are_unicode_s_categories_cc_zl_and_zp_but_tab():
    for code in range(0x110000):
        ch = chr(code)
        expected = ch != "\t" and unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        assert (control_character_problem(f"a{ch}b") is not None) == expected, hex(code)


@pytest.mark.parametrize("sender, to, portal, server", [
    (Sender("mailer@example.test", "Portal", "help@example.test"), "admin@example.org", "City Portal", "Office 365"),
    (Sender("mailer@example.test"), "admin@example.org", "A portal with a name long enough to fold a line", ""),
    (Sender("admin@bücher.example", "Jörg Müller"), "zoe@example.org", "Städtische Bühne", "Mailhost"),
])
def test_sample_envelope_is_the_sample_message(sender, to, portal, server):
    """The sample mail written directly has the bytes the email package writes for sample_message."""
    now = datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone.utc)
    written, built = sample_envelope(sender, to, portal, server, now), Envelope.of(sample_message(sender, to, portal,
                                                                                                   server, now))

    def without_id(raw: bytes) -> bytes:
        return re.sub(rb"Message-ID: <[^>]*>", b"Message-ID: <>", raw)

    assert without_id(written.raw) == without_id(built.raw)
    assert (written.mail_from, written.recipients) == (built.mail_from, built.recipients)
    assert written.message_id.encode() in written.raw
