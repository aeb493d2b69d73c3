"""Request bodies: strict (no coercion, no unknown fields) so garbage is a 422.

Every text field is a `Text`, or carries `Storable` (last) next to its constraints: text
Postgres cannot store is refused here, as a 422 naming the field, instead of failing in
the database as a 5xx (tests/api/test_unstorable_text.py checks every body model).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, StringConstraints
from pydantic_core import PydanticCustomError

# Postgres `text` cannot hold NUL, and a lone surrogate has no UTF-8 encoding at all
# (asyncpg, argon2 and hashlib refuse to encode it). Everything else Unicode is storable.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def refuse_unstorable(value: object) -> object:
    """Raises a validation error (type `unstorable_text`) for a str holding NUL (U+0000) or a
    lone surrogate (U+D800-U+DFFF); any other value passes unchanged, to be typed by the field.

    A before-validator, so it runs ahead of the field's own checks (email syntax, lengths)
    and the detail names the real problem.
    """
    if isinstance(value, str) and (found := _UNSTORABLE.search(value)):
        char = f"U+{ord(found.group()):04X}"
        raise PydanticCustomError(
            "unstorable_text",
            "contains {char}, which cannot be stored (NUL and lone surrogates are refused)",
            {"char": char},
        )
    return value


# Last in an Annotated, after any constraints: then it runs first, and the constraints
# stay on the str schema itself (placed before them, pydantic checks the lengths before
# stripping whitespace, so "   " would pass as a display name).
Storable = BeforeValidator(refuse_unstorable)
Text = Annotated[str, Storable]

# Characters a name may not hold: controls (Cc: tabs, newlines, escapes), format
# characters (Cf: bidi overrides such as U+202E that reverse what follows, zero-width
# spaces and joiners, U+FEFF), private use (Co: renders as anything or nothing) and
# surrogates (Cs). Letters of every script, marks, emoji and spaces pass.
_NOT_IN_NAMES = frozenset({"Cc", "Cf", "Co", "Cs"})
# Except the two joiner controls (ZWNJ U+200C, ZWJ U+200D) between two characters that
# are neither spaces nor format characters: Indic scripts need them to spell names
# (Devanagari, Bengali, Malayalam conjuncts), and emoji sequences join with ZWJ (as in
# UTS #31's contexts for them). Alone, doubled or at an edge they only hide text.
_JOINERS = frozenset("\u200c\u200d")


def _joins(value: str, at: int) -> bool:
    """Whether value[at], a joiner, sits between two characters it may join."""
    if not 0 < at < len(value) - 1:
        return False
    return all(unicodedata.category(value[at + side])[0] not in "ZC" for side in (-1, 1))


# Letters that render as blank space (Hangul fillers, the blank Braille pattern): a
# name of them alone looks empty, like one of spaces.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _visible(char: str) -> bool:
    """A letter, digit, punctuation or symbol that draws something; not a space, and not
    a combining mark, which draws only on the character before it."""
    return unicodedata.category(char)[0] in "LNPS" and char not in _BLANK_LETTERS


def refuse_invisible(value: object) -> object:
    """Raises a validation error for a str holding a character of category Cc, Cf, Co or Cs
    (a joiner between two characters aside: see _JOINERS) (type `unprintable_text`,
    naming it as U+XXXX), or none a reader can see (type
    `invisible_text`); any other value passes unchanged. A before-validator like
    `refuse_unstorable`, placed before it in an Annotated so that one runs first."""
    if not isinstance(value, str):
        return value
    for at, char in enumerate(value):
        if char in _JOINERS and _joins(value, at):
            continue
        if unicodedata.category(char) in _NOT_IN_NAMES:
            raise PydanticCustomError(
                "unprintable_text",
                "contains {char} ({category}); control, format (bidi, zero-width),"
                " private-use and surrogate characters are refused",
                {"char": f"U+{ord(char):04X}", "category": unicodedata.category(char)},
            )
    if value and not any(_visible(char) for char in value):
        raise PydanticCustomError(
            "invisible_text", "must contain at least one visible character", {}
        )
    return value


def nfkc(value: object) -> object:
    """A str in Unicode NFKC (compatibility forms folded: full-width `a` U+FF41 is `a`,
    the ligature U+FB01 is `fi`); any other value unchanged. For emails: one address typed two
    ways is one account. Runs after `refuse_unstorable` (placed before it)."""
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else value


Printable = BeforeValidator(refuse_invisible)
Nfkc = BeforeValidator(nfkc)

# NFKC before the syntax check and the lowercasing (`lower(email)` in register's unique
# index and login's lookup), on both: `ax@ex.com` typed with a full-width
# `a` (U+FF41) is `ax@ex.com`, at sign-up and at login.
Email = Annotated[EmailStr, Field(max_length=254), Nfkc, Storable]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128), Storable]
DisplayName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=80),
    Printable,
    Storable,
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RegisterBody(Strict):
    email: Email
    password: Password
    display_name: DisplayName


class LoginBody(Strict):
    # Trimmed like registration's EmailStr trims it: " a@example.com " registers
    # a@example.com, and the same text must log in to it.
    email: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=254), Nfkc, Storable
    ]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128), Storable]


class RefreshBody(Strict):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512), Storable]


class MitraPatchBody(Strict):
    is_active: bool
