"""One rule for user ids on every path: the CLI's ``--user``, ``import`` lines, consent and the
API (docs/behaviour.md §4). Checked before any SQL, so every database backend sees the same ids.

An id is NFC-normalised and stripped of surrounding spaces; it must not be blank (nor drawn
blank), must hold no control, format (bidi overrides, zero-width characters), other invisible,
separator or surrogate characters, and is at most 255 characters long (the width of every
``user_id`` column).
"""

from __future__ import annotations

import unicodedata

from discoveryctl.errors import InvalidInput

MAX_LENGTH = 255

# Unicode general categories refused anywhere in an id: control (Cc), format (Cf: bidi
# overrides and isolates, zero-width spaces and joiners, the BOM), surrogate (Cs), private use
# (Co), unassigned (Cn), line and paragraph separators (Zl, Zp).
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character (bidi override or zero-width)",
    "Cs": "a lone surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def valid_user_id(raw: str) -> str:
    """``raw`` as the stored user id, or ``InvalidInput`` saying what is wrong with it."""
    refusal = refusal_of(raw)
    if refusal is not None:
        raise InvalidInput(f"user id {shown(raw)} is not acceptable: {refusal}")
    # Mutation testing: ASCII is its own NFC form; normalising it anyway is only slower.
    normal = raw if raw.isascii() else unicodedata.normalize("NFC", raw)  # pragma: no mutate
    return normal.strip()


# Unicode's Default_Ignorable_Code_Point characters that are not already refused by their
# category: invisible by definition (combining grapheme joiner, Hangul fillers, variation
# selectors, Mongolian and Khmer invisibles, tags). DerivedCoreProperties.txt, Unicode 15.1:
# https://www.unicode.org/Public/15.1.0/ucd/DerivedCoreProperties.txt
_INVISIBLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
# Characters that draw nothing though they are not spaces: an id made of them is blank.
_BLANK = "\u2800"  # BRAILLE PATTERN BLANK


def refusal_of(raw: str) -> str | None:
    """Why ``raw`` cannot be a user id, or ``None`` when it can."""
    # Printable ASCII (nearly every id) holds none of the refused characters and is its own
    # NFC form: only the rest is walked character by character (a 100,000-line import).
    # Mutation testing: walking or normalising a plain id anyway changes nothing but speed.
    plain = raw.isascii() and raw.isprintable()  # pragma: no mutate
    for character in "" if plain else raw:  # pragma: no mutate
        category = unicodedata.category(character)
        if category in _REFUSED_CATEGORIES:
            return f"it contains {_REFUSED_CATEGORIES[category]} (U+{ord(character):04X})"
        code = ord(character)
        if any(low <= code <= high for low, high in _INVISIBLE_RANGES):
            return f"it contains an invisible character (U+{code:04X})"
    user_id = (raw if plain else unicodedata.normalize("NFC", raw)).strip()  # pragma: no mutate
    if not user_id.replace(_BLANK, "").strip():
        return "it is blank"
    if len(user_id) > MAX_LENGTH:
        return f"it is {len(user_id)} characters long, more than {MAX_LENGTH}"
    return None


def shown(raw: str, limit: int = 60) -> str:
    """The id quoted for a message: escaped, so it cannot move the terminal's cursor."""
    text = raw if len(raw) <= limit else raw[:limit] + "…"
    return ascii(text) if not text.isprintable() else repr(text)
