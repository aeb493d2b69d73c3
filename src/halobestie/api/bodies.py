"""Request bodies: strict (no coercion, no unknown fields) so garbage is a 422.

Every text field is a `Text`, or carries `Storable` (last) next to its constraints: text
Postgres cannot store is refused here, as a 422 naming the field, instead of failing in
the database as a 5xx (tests/api/test_unstorable_text.py checks every body model).
"""

from __future__ import annotations

import re
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

Email = Annotated[EmailStr, Field(max_length=254), Storable]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128), Storable]
DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80), Storable
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
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=254), Storable
    ]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128), Storable]


class RefreshBody(Strict):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512), Storable]


class MitraPatchBody(Strict):
    is_active: bool
