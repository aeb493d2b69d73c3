"""`POST /api/sessions/{id}/extend`: the customer buys more minutes (SPEC §4, §7).

Two guards on top of the SPEC's "only an active session":

* **A cap on the total**: `ends_at - started_at` (the paid total: booking plus every
  extension) may not pass `SESSION_MAX_TOTAL_MINUTES`; an extension past it is refused
  whole (`SessionTooLong`, 409), with the minutes still allowed in the detail.
* **Idempotent retries**: with an `Idempotency-Key`, the extension is recorded in
  `session_extensions` (migration 0006; this module owns its SQL) in the extending
  transaction, keyed (session, key). A retry with the key — after a lost answer, or
  racing the first — takes the same session lock, finds the row and answers the session
  as it is now without extending again (like a replayed payment). A refused extension
  records nothing, so its retry is judged afresh. Without the key nothing changes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from ..aftercommit import AfterCommit, run_after_commit
from ..auth.tokens import Principal
from ..clock import iso
from ..context import Context
from ..errors import IdempotencyKeyReused, InvalidState, SessionTooLong
from ..events.announce import record_effects
from ..timers import schedule_timer
from .actions import lock_as_party
from .models import SESSION_COLUMNS, ChatSession
from .transitions import record_event, session_changed
from .warnings import arm_warnings

KEYED_EXTENSION_SQL = "SELECT minutes FROM session_extensions WHERE session_id = $1 AND key = $2"
RECORD_EXTENSION_SQL = """
INSERT INTO session_extensions (session_id, key, minutes, ends_at, created_at)
VALUES ($1, $2, $3, $4, $5)
"""


def check_total(row: ChatSession, ends_at: datetime, max_total_minutes: int) -> None:
    """SessionTooLong if `ends_at` would make the session last more than
    `max_total_minutes` from `started_at`; the detail says how many minutes are left."""
    assert row.started_at is not None and row.ends_at is not None  # an active session
    cap = timedelta(minutes=max_total_minutes)
    if ends_at - row.started_at <= cap:
        return
    left = max(0, (cap - (row.ends_at - row.started_at)) // timedelta(minutes=1))
    raise SessionTooLong(
        f"chat session {row.id} may last at most {max_total_minutes} minutes in all"
        f" (SESSION_MAX_TOTAL_MINUTES); at most {left} more minutes can be bought"
    )


async def do_extend_session(
    ctx: Context,
    *,
    session_id: UUID,
    principal: Principal,
    minutes: int,
    now: datetime,
    idempotency_key: str | None = None,
) -> ChatSession:
    """The customer buys `minutes` more: `ends_at` moves (`duration_minutes` stays the
    booked length) and the expiry and warning timers with it. Only an active session not
    run out (InvalidState), and not past SESSION_MAX_TOTAL_MINUTES in all (SessionTooLong).
    `idempotency_key` (1-200 visible ASCII characters, checked by the caller): a key
    already recorded for this session returns the session as it is now, unextended, or
    IdempotencyKeyReused if it was recorded with other `minutes`. NotFound for a stranger."""
    async with ctx.db.transaction() as conn:
        # Under the session's lock: a racing retry waits here and then sees the row.
        row = await lock_as_party(conn, session_id, principal)
        if idempotency_key is not None:
            recorded = await conn.fetchval(KEYED_EXTENSION_SQL, session_id, idempotency_key)
            if recorded is not None:
                if recorded != minutes:
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {idempotency_key!r} was used to extend chat session"
                        f" {session_id} by {recorded} minutes, not {minutes}"
                    )
                return row
        if row.status != "active":
            raise InvalidState(
                f"chat session {session_id} is {row.status}; only an active session can be extended"
            )
        if row.ends_at is None or row.ends_at <= now:
            raise InvalidState(f"chat session {session_id} has run out; it cannot be extended")
        ends_at = row.ends_at + timedelta(minutes=minutes)
        check_total(row, ends_at, ctx.settings.session_max_total_minutes)
        extended = await conn.fetchrow(
            f"""
            UPDATE chat_sessions SET ends_at = $2, updated_at = $3
            WHERE id = $1 RETURNING {SESSION_COLUMNS}
            """,  # noqa: S608
            session_id,
            ends_at,
            now,
        )
        row = ChatSession.from_written(extended)
        if idempotency_key is not None:
            await conn.execute(
                RECORD_EXTENSION_SQL, session_id, idempotency_key, minutes, ends_at, now
            )
        await record_event(
            conn, session_id, "active", "active", principal.user_id, "customer",
            f"extended by {minutes} minutes to {iso(ends_at)}", now,
        )  # fmt: skip
        await schedule_timer(conn, "session_expiry", session_id, ends_at)
        await arm_warnings(ctx, conn, session_id, ends_at, now)  # SPEC §7: they move too
        effects: list[AfterCommit] = [session_changed(ctx, [row])]
        await record_effects(conn, now, effects)
    await run_after_commit(ctx, effects)
    return row
