"""The session timers' handlers: payment timeout and session expiry.

In the runtime's table of timer kinds (`runtime.timer_handlers`), built before startup
restores overdue timers. Each runs inside the
firing transaction, which already holds the timer row; it locks the session and is a
no-op when the session has moved on (paid, ended, rerouted, extended). Capacity and
events follow after commit, as the `session_changed` effect (aftercommit.py).

Lock order, shared with `actions.lock_for_change`: the session's timer rows, then the
session row. The runner takes timer rows with SKIP LOCKED and never waits for them, so a
handler waiting for a session can never deadlock with an action on that session.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from ..aftercommit import AfterCommit
from ..context import Context
from ..timers import cancel_timer, schedule_timer
from .transitions import lock_session_if_exists, session_changed, transition


async def on_payment_timeout(
    ctx: Context, conn: asyncpg.Connection, session_id: UUID, now: datetime
) -> list[AfterCommit]:
    """Unpaid after PAYMENT_TIMEOUT_SECONDS: pending_payment -> cancelled."""
    row = await lock_session_if_exists(conn, session_id)
    if row is None or row.status != "pending_payment":
        return []
    row = await transition(
        conn, row, "cancelled", actor_id=None, actor_role="system", reason="payment timeout",
        now=now,
    )  # fmt: skip
    return [session_changed(ctx, [row])]


async def on_session_expiry(
    ctx: Context, conn: asyncpg.Connection, session_id: UUID, now: datetime
) -> list[AfterCommit]:
    """`ends_at` reached: active -> expired. If `ends_at` lies later than this timer (an
    extension that did not move the timer), re-arm at `ends_at` instead."""
    row = await lock_session_if_exists(conn, session_id)
    if row is None or row.status != "active":
        return []
    ends_at = row.ends_at
    if ends_at is not None and ends_at > now:
        # Delete the firing row (the runner's "mark fired" then touches nothing) and
        # schedule a fresh one: re-arming the same row would be marked fired right away.
        await cancel_timer(conn, "session_expiry", session_id)
        await schedule_timer(conn, "session_expiry", session_id, ends_at)
        return []
    row = await transition(
        conn, row, "expired", actor_id=None, actor_role="system", reason="ends_at reached",
        now=now,
    )  # fmt: skip
    return [session_changed(ctx, [row])]
