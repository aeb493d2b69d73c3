"""Request bodies: strict (no coercion, no unknown fields) so garbage is a 422."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

Email = Annotated[EmailStr, Field(max_length=254)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RegisterBody(Strict):
    email: Email
    password: Password
    display_name: DisplayName


class LoginBody(Strict):
    email: Annotated[str, StringConstraints(min_length=1, max_length=254)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class RefreshBody(Strict):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class MitraPatchBody(Strict):
    is_active: bool
