"""The redactor finds a secret without a Python step per character when there is none (the usual
case, every text of every report): the same spans as the character-by-character search it keeps
for the texts that do hold one."""
from hypothesis import given, settings
from hypothesis import strategies as st

from webapp.mail.redact import _BASE64, REDACTED, Redactor, _fold

SECRET = "Pässwort-Ünique-77"


def reference_spans(redactor: Redactor, text: str) -> list[tuple[int, int]]:
    """The search as it was: every character folded and kept one by one, then the needles."""
    kept = [i for i, ch in enumerate(text) if not ch.isspace()]
    squeezed = "".join(_fold(text[i]) for i in kept)
    spans = []
    for needle, whole_word in redactor._needles.items():
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
    merged = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


pieces = st.sampled_from([SECRET, SECRET.upper(), " ".join(SECRET), "pässwort", "AUTH PLAIN ", "\u0130", "ß",
                          "\n", "\t", "\u00a0", "250 OK", "x" * 5])
texts = st.lists(st.one_of(pieces, st.text(max_size=12)), max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_the_spans_are_those_of_the_character_by_character_search(text):
    redactor = Redactor([SECRET])
    assert redactor._spans(text) == reference_spans(redactor, text)


def test_a_secret_spread_over_white_space_and_case_is_still_hidden():
    redactor = Redactor([SECRET])
    text = "535 rejected: " + " ".join(SECRET.upper()) + " (try again)"
    assert redactor.clean(text) == f"535 rejected: {REDACTED} (try again)"
    assert redactor.clean("250 2.0.0 OK queued") == "250 2.0.0 OK queued"


def _fold_by_character(text: str) -> str:
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text)


@given(st.one_of(texts, st.text(alphabet=st.characters(max_codepoint=127))))
@settings(max_examples=300, deadline=None)
def test_fold_keeps_one_character_for_one(text):
    """The ASCII shortcut of _fold folds exactly as the character-by-character rule."""
    assert _fold(text) == _fold_by_character(text)
    assert len(_fold(text)) == len(text)


def test_a_secret_added_again_changes_nothing_and_stays_hidden():
    """A kept SMTP session hands its redactor to the next message's session, which adds the
    token again: the second add is a no-op and the token is still redacted."""
    token = "ya29.A0ARrdaM-" + "Zq9x_Ty" * 150
    redactor = Redactor(["hunter2-hunter2"])
    redactor.add(token)
    needles = dict(redactor._needles)
    redactor.add(token)
    assert redactor._needles == needles
    assert token not in redactor.clean(f"535 5.7.8 token {token} expired")
    assert REDACTED in redactor.clean(f"535 5.7.8 token {token} expired")
