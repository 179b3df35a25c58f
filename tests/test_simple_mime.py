"""A simple message written directly (simple_mime) has the very bytes and envelope the email package
gives (compose() + Envelope.of, the reference), on either side of every limit of simple_mime."""
import itertools
import random
from datetime import datetime, timezone

import pytest

from webapp.mail import message as message_module
from webapp.mail.envelope import Envelope
from webapp.mail.message import Attachment, Mailbox, compose, compose_simple

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)

NAMES = ["", "Ann", "Ann Example", "A. Smith", "O'Brien", "Ann  Two Spaces", " Leading", "Trailing ", "Jörg Müller",
         "=?utf-8?q?Evil?=", 'Say "hi"', "Doe, John", "x" * 60, "Tab\there", "a+b=c?", "Ann (home)"]
ADDRESSES = ["ann@example.org", "Ann.Example@Example.ORG", "a+tag@sub.example.co", "o'brien@example.org",
             "admin@bücher.example", "x" * 40 + "@example.org", "a=?b@example.org", "first.last@example.org"]
SUBJECTS = ["", "Hello", "Ticket #4711 was updated", "Grüße aus Köln", "x" * 69, "x" * 70, "word " * 20,
            "two  spaces", " leading", "trailing ", "=?utf-8?q?Looks_encoded?=", "Re: [Ticket] a (b) <c> \"d\"",
            "tab\there", "a;b,c:d@e"]
BODIES = ["Hello,\n\nthe ticket was updated.\n", "no newline at the end", "", "\n", "line\r\nwith CRLF\r\n",
          "x" * 78 + "\n", "x" * 79 + "\n", "Grüße\n", "From the start\n.\n", "lone\rreturn\n", "tabs\tand  spaces  \n",
          "<p>Hello <b>world</b></p>", "\x0bvertical tab\n", "\n\n\n"]
HEADERS = [[], [("X-Ticket-Id", "42")], [("X-Empty", "")], [("Keywords", "a, b")], [("Orig-Date", "yesterday")],
           [("X-Long", "y" * 70)], [("X-Unicode", "ü")], [("X-A", "1"), ("x-a", "2")], [("In-Reply-To", "<a@b>")],
           [("X-Encoded", "=?x?=")], [("X-Spaces", "a  b")]]


@pytest.fixture(autouse=True)
def fixed_message_id(monkeypatch):
    monkeypatch.setattr(message_module, "make_msgid", lambda domain: f"<1.2.3@{domain}>")


def both(*args, **options):
    """(direct or None, reference): the envelope written directly, and the one the email package gives."""
    simple = compose_simple(*args, now=NOW, **options)
    random.seed(1)  # a multipart message's boundary is random
    reference = Envelope.of(compose(*args, now=NOW, **options))
    random.seed(1)
    composed = Envelope.composed(*args, now=NOW, **options)
    assert composed == reference
    return simple, reference


def direct_is_reference(*args, **options) -> bool:
    """Whether the message was written directly; either way its envelope is the reference's."""
    simple, reference = both(*args, **options)
    if simple is not None:
        raw, mail_from, recipients, message_id = simple
        assert Envelope(mail_from, recipients, raw, message_id) == reference
    return simple is not None


def test_the_api_s_message_is_written_directly_with_the_same_bytes():
    assert direct_is_reference(Mailbox("helpdesk@example.com"), [Mailbox("to@example.org")],
                               "Ticket #4711 was updated", text="Hello,\n\nthe ticket #4711 was updated.\n")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("address", ADDRESSES)
def test_every_sender_and_recipient(name, address):
    for field in ("sender", "to", "cc", "bcc", "reply_to"):
        mailbox = Mailbox(address, name)
        options = {"cc": [mailbox]} if field == "cc" else {"bcc": [mailbox]} if field == "bcc" else \
            {"reply_to": mailbox} if field == "reply_to" else {}
        sender = mailbox if field == "sender" else Mailbox("helpdesk@example.com", "Help Desk")
        to = [mailbox] if field == "to" else ([] if options else [Mailbox("to@example.org")])
        direct_is_reference(sender, to or [Mailbox("to@example.org")], "Hello", text="Hi\n", **options)


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("headers", HEADERS)
def test_every_subject_and_header(subject, headers):
    direct_is_reference(Mailbox("a@example.org"), [Mailbox("b@example.org")], subject, text="Hi\n", headers=headers)


@pytest.mark.parametrize("body", BODIES)
def test_every_body_as_text_html_or_both(body):
    sender, to = Mailbox("a@example.org", "Ann"), [Mailbox("b@example.org")]
    assert direct_is_reference(sender, to, "s", text=body) == (body.isascii() and "x" * 79 not in body)
    assert direct_is_reference(sender, to, "s", html=body) == (body.isascii() and "x" * 79 not in body)
    assert not direct_is_reference(sender, to, "s", text=body, html="<p>x</p>")


def test_attachments_go_through_the_email_package():
    assert not direct_is_reference(Mailbox("a@example.org"), [Mailbox("b@example.org")], "s", text="t",
                                   attachments=[Attachment("a.txt", "text/plain", b"x")])


def test_many_recipients_fold_only_through_the_email_package():
    for count in (1, 2, 3, 4, 20):
        to = [Mailbox(f"person{i}@example.org", f"Person {i}") for i in range(count)]
        direct_is_reference(Mailbox("a@example.org"), to, "s", text="t", cc=to[:2], bcc=to[-1:])


@pytest.mark.parametrize("alphabet", [
    "abcXYZ09 .,;:\"'()<>@=?!#~-_\\\tüé€",  # much that the email package quotes, encodes or folds
    "abcXYZ  .'-",  # mostly what simple_mime writes itself, up to its limits and just beyond
])
def test_random_messages(alphabet):
    rng = random.Random(12)

    def text(limit):
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(limit)))

    written = []
    for _ in range(400):
        names = [rng.choice(NAMES + [text(12)]) for _ in range(3)]
        to = [Mailbox(rng.choice(ADDRESSES), names[0])]
        written.append(direct_is_reference(
            Mailbox(rng.choice(ADDRESSES), names[1]), to, rng.choice(SUBJECTS + [text(90)]),
            text=rng.choice(BODIES + [text(100)]), cc=[Mailbox(rng.choice(ADDRESSES), names[2])],
            headers=rng.choice(HEADERS + [[("X-R", text(80))]])))
    assert 0 < sum(written) < len(written)


def test_both_paths_refuse_alike():
    for bad in ({"headers": [("From", "x")]}, {"headers": [("X-A", "a\nb")]}, {"text": None},
                {"to": [Mailbox("not an address")]}):
        options = {"text": "t", "to": [Mailbox("b@example.org")], **bad}
        to = options.pop("to")
        with pytest.raises(ValueError) as simple:
            compose_simple(Mailbox("a@example.org"), to, "s", **options)
        with pytest.raises(ValueError) as reference:
            compose(Mailbox("a@example.org"), to, "s", **options)
        assert str(simple.value) == str(reference.value)


def test_the_limits_are_each_tried_on_both_sides():
    """The direct writer took part of the messages above and left the rest: it is no empty claim."""
    outcomes = {direct_is_reference(Mailbox("a@example.org"), [Mailbox("b@example.org")], subject, text=body)
                for subject, body in itertools.product(["x" * 69, "x" * 70], ["x" * 78, "x" * 79])}
    assert outcomes == {True, False}
