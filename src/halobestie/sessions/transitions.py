"""Chat-session state changes: the one place that moves `chat_sessions.status`.

Every change is checked against the allowed graph, recorded in `chat_session_events`
(from, to, by whom, why, when) in the same transaction, with `session.updated` to both
parties recorded in the event log by the `session_changed` effect (its caller records it
as the transaction's last statement), and followed after commit by that effect: the
mitra's open sessions recomputed from Postgres into the mirror (never INCR/DECR)
(`after_session_change`), then the events delivered.

    pending_payment --paid--> active --end--> ended
          |                      |--ends_at--> expired
          |--end/timeout--> cancelled
          '--reroute--> rerouted <--reroute--'
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from ..availability.load import record_session_change
from ..availability.sync import recompute_capacity
from ..concepts import OPEN_SESSION_STATUSES, SessionStatus, open_session
from ..context import Context
from ..errors import InvalidState, NotFound
from ..events.announce import Announce
from .models import SESSION_COLUMNS, ActorRole, ChatSession

Status = SessionStatus
ALLOWED: dict[str, frozenset[str]] = {
    "pending_payment": frozenset({"active", "cancelled", "rerouted"}),
    "active": frozenset({"ended", "expired", "rerouted"}),
}


def public_session(session: ChatSession, now: datetime) -> dict[str, Any]:
    """The `{session: ...}` payload (SPEC §4, §5, §7): `ChatSession.public`."""
    return session.public(now)


async def lock_session_if_exists(conn: asyncpg.Connection, session_id: UUID) -> ChatSession | None:
    """The session, locked FOR UPDATE for the rest of the transaction; None if absent."""
    row = await conn.fetchrow(
        f"SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = $1 FOR UPDATE",  # noqa: S608
        session_id,
    )
    return None if row is None else ChatSession.from_row(row)


async def lock_session(conn: asyncpg.Connection, session_id: UUID) -> ChatSession:
    """`lock_session_if_exists`; NotFound if absent."""
    session = await lock_session_if_exists(conn, session_id)
    if session is None:
        raise NotFound(f"no chat session with id {session_id}")
    return session


async def transition(
    conn: asyncpg.Connection,
    row: ChatSession,
    to: Status,
    *,
    actor_id: UUID | None,
    actor_role: ActorRole,
    reason: str,
    now: datetime,
) -> ChatSession:
    """Move a session locked with `lock_session` to `to`; InvalidState if the graph does
    not allow it. Returns the updated session."""
    current = row.status
    if to not in ALLOWED.get(current, frozenset()):
        raise InvalidState(f"chat session {row.id} is {current}; it cannot become {to}")
    updated = await conn.fetchrow(
        f"""
        UPDATE chat_sessions SET status = $2, updated_at = $3,
               closed_at = CASE WHEN {open_session("$2")} THEN NULL
                                ELSE $3::timestamptz END
        WHERE id = $1 RETURNING {SESSION_COLUMNS}
        """,  # noqa: S608
        row.id,
        to,
        now,
    )
    await record_event(conn, row.id, current, to, actor_id, actor_role, reason, now)
    # Paying (pending_payment -> active) neither starts nor ends a session: no activity.
    closed = to not in OPEN_SESSION_STATUSES
    await record_session_change(conn, row.mitra_id, now if closed else None)
    return ChatSession.from_written(updated)


async def record_event(
    conn: asyncpg.Connection,
    session_id: UUID,
    from_status: str | None,
    to_status: str,
    actor_id: UUID | None,
    actor_role: ActorRole,
    reason: str,
    now: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO chat_session_events"
        " (session_id, from_status, to_status, actor_id, actor_role, reason, at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        session_id,
        from_status,
        to_status,
        actor_id,
        actor_role,
        reason,
        now,
    )


def session_changed(ctx: Context, rows: Iterable[ChatSession]) -> Announce:
    """The effect of changes to these sessions: `session.updated` to both parties of
    each, to record in the transaction (`events.announce.record_effects`, its last
    statement); after commit, `after_session_change` then the events' delivery."""
    changed = list(rows)
    now = ctx.clock.now()
    events = [
        ([row.customer_id, row.mitra_id], "session.updated", {"session": public_session(row, now)})
        for row in changed
    ]

    async def recompute() -> None:
        await after_session_change(ctx, changed)

    return Announce(ctx, events, name="session_changed", before=recompute)


async def after_session_change(ctx: Context, rows: Iterable[ChatSession]) -> None:
    """After commit: capacity from Postgres for each mitra (the events follow)."""
    for mitra_id in sorted({row.mitra_id for row in rows}):
        await recompute_capacity(ctx, mitra_id)
