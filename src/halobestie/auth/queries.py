"""Reads of users and auth sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ..context import Context
from ..errors import InvalidToken
from .tokens import Principal


@dataclass(frozen=True)
class User:
    id: UUID
    email: str
    display_name: str
    role: str

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "display_name": self.display_name,
            "role": self.role,
        }


USER_SQL = "SELECT id, email, display_name, role FROM users"


async def get_user(ctx: Context, user_id: UUID) -> User | None:
    async with ctx.db.connection() as conn:
        row = await conn.fetchrow(USER_SQL + " WHERE id = $1", user_id)
    return User(**dict(row)) if row else None


async def require_live_session(ctx: Context, principal: Principal) -> None:
    """Logout and deactivation revoke auth sessions; every endpoint that talks to
    Postgres anyway refuses their access tokens at once. (The hot path does not: see
    docs/subsystems/auth.md for that bounded window.)"""
    async with ctx.db.connection() as conn:
        live = await conn.fetchval(
            "SELECT true FROM auth_sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
            principal.session_id,
            principal.user_id,
        )
    if not live:
        raise InvalidToken("this login was ended (logout or deactivation); log in again")
