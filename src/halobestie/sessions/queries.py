"""Reads of chat sessions: one session as its parties see it, and its status history.

Visibility: a session is visible to its customer, its mitra and any admin. To anyone
else it does not exist: the same 404 as an unknown id, so ids cannot be probed.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from ..auth.tokens import Principal
from ..context import Context
from ..errors import NotFound
from .models import SESSION_COLUMNS, STATUS_CHANGE_COLUMNS, ChatSession, StatusChange

EVENTS_SQL = f"""
SELECT {STATUS_CHANGE_COLUMNS}
FROM chat_session_events WHERE session_id = $1 ORDER BY id
"""  # noqa: S608


def not_found(session_id: UUID) -> NotFound:
    return NotFound(f"no chat session with id {session_id}")


def can_view(session: ChatSession | asyncpg.Record, principal: Principal) -> bool:
    """Whether `principal` may see the session: `session` is a `ChatSession`, or a record
    of the session's `customer_id` and `mitra_id` (the chat's narrow reads)."""
    if principal.role == "admin":
        return True
    if isinstance(session, ChatSession):
        customer_id, mitra_id = session.customer_id, session.mitra_id
    else:
        customer_id, mitra_id = session["customer_id"], session["mitra_id"]
    if principal.role == "customer":
        return bool(customer_id == principal.user_id)
    if principal.role == "mitra":
        return bool(mitra_id == principal.user_id)
    return False


def is_party(session: ChatSession | asyncpg.Record, principal: Principal) -> bool:
    """The session's own customer or mitra (admins are not parties)."""
    return principal.role in ("customer", "mitra") and can_view(session, principal)


async def get_session(ctx: Context, session_id: UUID) -> ChatSession:
    """The session; NotFound for an unknown id."""
    async with ctx.db.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = $1",  # noqa: S608
            session_id,
        )
    if row is None:
        raise not_found(session_id)
    return ChatSession.from_row(row)


async def get_visible_session(ctx: Context, session_id: UUID, principal: Principal) -> ChatSession:
    """`get_session` for someone who may see it (`can_view`); NotFound for anyone else."""
    session = await get_session(ctx, session_id)
    if not can_view(session, principal):
        raise not_found(session_id)
    return session


async def list_session_events(
    ctx: Context, session_id: UUID, principal: Principal
) -> list[StatusChange]:
    """The session's status history, oldest first (visibility as `get_visible_session`)."""
    await get_visible_session(ctx, session_id, principal)
    async with ctx.db.connection() as conn:
        rows = await conn.fetch(EVENTS_SQL, session_id)
    return [StatusChange.from_row(row) for row in rows]
