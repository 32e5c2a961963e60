"""The text rule of campaign content (R-OC-10 for K-OLDCUST texts, R-PH-6 for phase texts).

A text reaches consumers as it is written, so it may hold letters, digits,
punctuation, symbols, spaces (the ideographic space U+3000 too), newlines and
emoji (with their joiner U+200D and variation selectors), and nothing that
renders as nothing or pretends to be something else:

* control, format, private-use, surrogate and unassigned characters
  (categories Cc, Cf, Co, Cs, Cn; `illegal_characters`);
* the line and paragraph separators U+2028 / U+2029 (they break lines where a
  channel does not expect it);
* blank look-alikes: letters and symbols that render as an empty cell
  (Hangul fillers, the braille blank, ...) and the replacement characters
  U+FFFC / U+FFFD (`BLANK_LOOKALIKES`);

and a text must not be blank: empty once whitespace and blank look-alikes are
trimmed (a blank card).
"""

from __future__ import annotations

import unicodedata

from sluice.schemas.rules import rule_error

ILLEGAL_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})
# Emoji need these: the zero-width joiner of 👨‍👩‍👧 and the text / emoji variation selectors.
ALLOWED_FORMAT = frozenset({"\u200d", "\ufe0f", "\ufe0e"})
LINE_SEPARATORS = frozenset({"\u2028", "\u2029"})
# The one definition of the characters that look like nothing (or like a broken glyph) while not being
# whitespace: texts made of them look blank, and a URL must not contain them either (schemas/urls.py).
BLANK_LOOKALIKES = frozenset({
    "\u115f",  # HANGUL CHOSEONG FILLER
    "\u1160",  # HANGUL JUNGSEONG FILLER
    "\u3164",  # HANGUL FILLER
    "\uffa0",  # HALFWIDTH HANGUL FILLER
    "\u2800",  # BRAILLE PATTERN BLANK
    "\u17b4",  # KHMER VOWEL INHERENT AQ (invisible, deprecated)
    "\u17b5",  # KHMER VOWEL INHERENT AA (invisible, deprecated)
    "\ufffc",  # OBJECT REPLACEMENT CHARACTER
    "\ufffd",  # REPLACEMENT CHARACTER
})
# How many code points a message names at most.
_NAMED_MAX = 5


def code_point(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def illegal_characters(text: str) -> list[str]:
    """The characters of `text` in the illegal categories (Cc, Cf, Co, Cs, Cn), in order, as "U+XXXX";
    a newline and the emoji format characters are not illegal."""
    return [code_point(ch) for ch in text
            if ch != "\n" and ch not in ALLOWED_FORMAT and unicodedata.category(ch) in ILLEGAL_CATEGORIES]


def is_refused_character(ch: str) -> bool:
    """Whether `ch` may not occur anywhere in a text: an illegal category, a line or paragraph
    separator, or a blank look-alike."""
    if ch == "\n" or ch in ALLOWED_FORMAT:
        return False
    return ch in LINE_SEPARATORS or ch in BLANK_LOOKALIKES or unicodedata.category(ch) in ILLEGAL_CATEGORIES


def refused_characters(text: str) -> list[str]:
    """The refused characters of `text` as "U+XXXX", each once, in order of first occurrence."""
    return list(dict.fromkeys(code_point(ch) for ch in text if is_refused_character(ch)))


def _blank(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Zs" or ch in BLANK_LOOKALIKES or ch in ALLOWED_FORMAT


def is_blank(text: str) -> bool:
    """Whether nothing visible is left once whitespace (newlines and U+3000 included), blank look-alikes
    and lone emoji joiners / variation selectors are trimmed. The empty text is blank."""
    return all(_blank(ch) for ch in text)


def text_problem(text: str, *, allow_empty: bool = False) -> str | None:
    """Why `text` is refused, or None. `allow_empty`: "" means "none" (an optional body), but a
    non-empty blank text is still refused."""
    bad = refused_characters(text)
    if bad:
        more = f" and {len(bad) - _NAMED_MAX} more" if len(bad) > _NAMED_MAX else ""
        return f"text contains illegal characters {', '.join(bad[:_NAMED_MAX])}{more}"
    if text == "" and allow_empty:
        return None
    if is_blank(text):
        return "text is blank: it has only whitespace or invisible characters"
    return None


def check_text(value: str, rule: str, *, allow_empty: bool = False) -> str:
    """`value` if it passes the text rule, else a validation error naming `rule`."""
    problem = text_problem(value, allow_empty=allow_empty)
    if problem:
        raise rule_error(rule, problem)
    return value
