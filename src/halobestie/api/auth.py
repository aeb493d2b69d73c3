"""Bearer-token parsing shared by FastAPI dependencies and the lean hot-path routes."""

from __future__ import annotations

from datetime import datetime

from ..auth.tokens import Principal, decode_access_token
from ..context import Context
from ..errors import Forbidden, InvalidToken


def principal_from_header(
    ctx: Context, authorization: str | None, now: datetime, roles: tuple[str, ...]
) -> Principal:
    if not authorization:
        raise InvalidToken("missing Authorization: Bearer <access token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("Authorization must be 'Bearer <access token>'")
    principal = decode_access_token(ctx.settings.jwt_secret, token.strip(), now)
    if roles and principal.role not in roles:
        raise Forbidden(f"this endpoint is for {' or '.join(roles)}, not {principal.role}")
    return principal
