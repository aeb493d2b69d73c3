"""Reads of users and auth sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ..context import Context
from ..errors import AccountDeactivated, Forbidden, InvalidToken
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


async def require_live_session(
    ctx: Context,
    principal: Principal,
    *,
    deactivated: type[Forbidden] = AccountDeactivated,
) -> None:
    """Logout and deactivation revoke auth sessions; every endpoint that talks to
    Postgres anyway refuses their access tokens at once: `deactivated` (403; by default
    AccountDeactivated, `account_deactivated`, as login and refresh answer; the mitra's
    status routes pass MitraDeactivated, the word SPEC §4 gives them and the heartbeat)
    for an ended login of a mitra that is deactivated, InvalidToken (401) for any other
    ended or unknown login. (The hot path does not: see docs/subsystems/auth.md for that
    bounded window.)"""
    async with ctx.db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT s.revoked_at IS NULL AS live, s.revoked_reason, m.is_active"
            " FROM auth_sessions s LEFT JOIN mitras m ON m.id = s.user_id"
            " WHERE s.id = $1 AND s.user_id = $2",
            principal.session_id,
            principal.user_id,
        )
    if row is not None and row["live"]:
        return
    # A mitra reactivated since is told to log in again, which now works.
    if row is not None and row["is_active"] is False:
        raise deactivated("this mitra account is deactivated; contact an admin")
    if row is not None and row["revoked_reason"] == "logout":
        raise InvalidToken("this login was logged out; log in again")
    raise InvalidToken("this login was ended; log in again")
