"""Reads of chat sessions: one session as its parties see it, and its status history.

Visibility: a session is visible to its customer, its mitra and any admin. To anyone
else it does not exist: the same 404 as an unknown id, so ids cannot be probed.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from ..auth.tokens import Principal
from ..clock import iso
from ..context import Context
from ..errors import NotFound
from .transitions import SESSION_COLUMNS

EVENTS_SQL = """
SELECT id, from_status, to_status, actor_id, actor_role, reason, at
FROM chat_session_events WHERE session_id = $1 ORDER BY id
"""


def not_found(session_id: UUID) -> NotFound:
    return NotFound(f"no chat session with id {session_id}")


def can_view(row: Any, principal: Principal) -> bool:
    if principal.role == "admin":
        return True
    if principal.role == "customer":
        return bool(row["customer_id"] == principal.user_id)
    if principal.role == "mitra":
        return bool(row["mitra_id"] == principal.user_id)
    return False


def is_party(row: Any, principal: Principal) -> bool:
    """The session's own customer or mitra (admins are not parties)."""
    return principal.role in ("customer", "mitra") and can_view(row, principal)


async def get_session(ctx: Context, session_id: UUID) -> Any:
    async with ctx.db.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = $1",  # noqa: S608
            session_id,
        )
    if row is None:
        raise not_found(session_id)
    return row


async def get_visible_session(ctx: Context, session_id: UUID, principal: Principal) -> Any:
    row = await get_session(ctx, session_id)
    if not can_view(row, principal):
        raise not_found(session_id)
    return row


async def list_session_events(
    ctx: Context, session_id: UUID, principal: Principal
) -> list[dict[str, Any]]:
    """The session's status history, oldest first (visibility as `get_visible_session`)."""
    await get_visible_session(ctx, session_id, principal)
    async with ctx.db.connection() as conn:
        rows = await conn.fetch(EVENTS_SQL, session_id)
    return [public_event(row) for row in rows]


def public_event(row: Any) -> dict[str, Any]:
    return {
        "from": row["from_status"],
        "to": row["to_status"],
        "actor_id": str(row["actor_id"]) if row["actor_id"] else None,
        "actor_role": row["actor_role"],
        "reason": row["reason"],
        "at": iso(row["at"]),
    }
