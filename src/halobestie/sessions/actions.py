"""Writes of the chat-session lifecycle. Each runs its transition in one transaction and
its side effects (capacity, events) after commit, via `after_session_change`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from ..context import Context
from .timers import schedule_timer
from .transitions import SESSION_COLUMNS, record_event


async def create_pending_session(
    ctx: Context,
    conn: Any,
    *,
    customer_id: UUID,
    mitra_id: UUID,
    duration_minutes: int,
    pairing_request_id: UUID,
    actor_id: UUID,
    now: datetime,
) -> Any:
    """Inside the accepting transaction: the new session in `pending_payment`, its
    history row, and its payment timeout. The caller runs `after_session_change` after
    its commit."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO chat_sessions
            (customer_id, mitra_id, status, duration_minutes, pairing_request_id,
             created_at, updated_at)
        VALUES ($1, $2, 'pending_payment', $3, $4, $5, $5)
        RETURNING {SESSION_COLUMNS}
        """,  # noqa: S608
        customer_id,
        mitra_id,
        duration_minutes,
        pairing_request_id,
        now,
    )
    await record_event(
        conn, row["id"], None, "pending_payment", actor_id, "mitra", "offer accepted", now
    )
    due = now + timedelta(seconds=ctx.settings.payment_timeout_seconds)
    await schedule_timer(conn, "payment_timeout", row["id"], due)
    return row
