"""Writes of the chat-session lifecycle. Each runs its transition in one transaction and
its side effects (capacity, events) after commit, as the `session_changed` effect
(aftercommit.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from ..aftercommit import AfterCommit, run_after_commit
from ..auth.tokens import Principal
from ..availability.load import record_session_change
from ..concepts import OPEN_SESSION_STATUSES, open_session
from ..context import Context
from ..errors import InvalidState, PaymentReferenceReused
from ..events.announce import record_effects
from ..timers import TimerKind, cancel_timer, schedule_timer
from .models import SESSION_COLUMNS, ActorRole, ChatSession
from .queries import is_party, not_found
from .transitions import Status, lock_session, record_event, session_changed, transition
from .warnings import arm_warnings

SESSION_TIMERS: tuple[TimerKind, ...] = ("payment_timeout", "session_expiry", "session_warning")
LOCK_TIMERS_SQL = """
SELECT id FROM timers WHERE ref_id = $1 AND kind = ANY($2::text[]) ORDER BY id FOR UPDATE
"""


async def create_pending_session(
    ctx: Context,
    conn: asyncpg.Connection,
    *,
    customer_id: UUID,
    mitra_id: UUID,
    duration_minutes: int,
    pairing_request_id: UUID,
    actor_id: UUID,
    now: datetime,
) -> ChatSession:
    """Inside the accepting transaction: the new session in `pending_payment`, its
    history row, and its payment timeout. The caller runs the `session_changed` effect
    after its commit (aftercommit.py)."""
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
    session = ChatSession.from_written(row)
    await record_event(
        conn, session.id, None, "pending_payment", actor_id, "mitra", "offer accepted", now
    )
    await record_session_change(conn, mitra_id, now)
    due = now + timedelta(seconds=ctx.settings.payment_timeout_seconds)
    await schedule_timer(conn, "payment_timeout", session.id, due)
    return session


async def lock_for_change(conn: asyncpg.Connection, session_id: UUID) -> ChatSession:
    """Lock the session for a change, in the order the timer runner uses (timer rows,
    then the session; see `lifecycle`): an action and a firing timer on the same session
    wait for each other instead of deadlocking. NotFound for an unknown id."""
    await conn.execute(LOCK_TIMERS_SQL, session_id, list(SESSION_TIMERS))
    return await lock_session(conn, session_id)


OPEN_OF_MITRA_SQL = f"""
SELECT id FROM chat_sessions WHERE mitra_id = $1 AND {open_session()} ORDER BY id
"""  # noqa: S608


async def open_session_ids(conn: asyncpg.Connection, mitra_id: UUID) -> list[UUID]:
    """Ids of the mitra's `pending_payment` and `active` sessions, in id order (unlocked:
    what the statement's snapshot saw)."""
    return [r["id"] for r in await conn.fetch(OPEN_OF_MITRA_SQL, mitra_id)]


async def lock_sessions_for_change(
    conn: asyncpg.Connection, session_ids: list[UUID]
) -> list[ChatSession]:
    """`lock_for_change` for each session, in the given order (callers pass id order, so
    two such callers cannot deadlock with each other). The rows as they are once locked:
    some may have closed meanwhile."""
    return [await lock_for_change(conn, session_id) for session_id in session_ids]


async def close_locked(
    conn: asyncpg.Connection, row: ChatSession, *, actor_id: UUID | None,
    actor_role: ActorRole, reason: str, now: datetime,
) -> ChatSession:  # fmt: skip
    """Close an open session locked with `lock_for_change`: active -> ended,
    pending_payment -> cancelled, its timers cancelled. The caller runs
    the `session_changed` effect after its commit (aftercommit.py)."""
    to: Status = "ended" if row.status == "active" else "cancelled"
    row = await transition(
        conn, row, to, actor_id=actor_id, actor_role=actor_role, reason=reason, now=now
    )
    for kind in SESSION_TIMERS:
        await cancel_timer(conn, kind, row.id)
    return row


async def lock_as_party(
    conn: asyncpg.Connection, session_id: UUID, principal: Principal
) -> ChatSession:
    """`lock_for_change` for one of the session's parties; NotFound for anyone else."""
    row = await lock_for_change(conn, session_id)
    if not is_party(row, principal):
        raise not_found(session_id)  # never reveal someone else's session
    return row


async def do_pay_session(
    ctx: Context, *, session_id: UUID, reference: str, now: datetime
) -> ChatSession:
    """The payment provider says `reference` paid for `session_id`: pending_payment ->
    active, `ends_at = now + duration`. Idempotent per reference: a replay returns the
    session as it is now; a reference already used for another session is refused."""
    effects: list[AfterCommit] = []
    async with ctx.db.transaction() as conn:
        # Under the session lock, so two deliveries of one reference are serialised and
        # the second sees the first's payment row.
        row = await lock_for_change(conn, session_id)
        paid_for = await conn.fetchval(
            "SELECT session_id FROM payments WHERE reference = $1", reference
        )
        if paid_for is not None and paid_for != session_id:
            raise PaymentReferenceReused(
                f"payment reference {reference!r} was already used for another chat session"
            )
        if paid_for is None:
            if row.status != "pending_payment":
                raise InvalidState(
                    f"chat session {session_id} is {row.status}; it can no longer be paid"
                )
            inserted = await conn.fetchval(
                "INSERT INTO payments (reference, session_id, received_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (reference) DO NOTHING RETURNING reference",
                reference,
                session_id,
                now,
            )
            if inserted is None:  # taken by a concurrent delivery for another session
                raise PaymentReferenceReused(
                    f"payment reference {reference!r} was already used for another chat session"
                )
            row = await transition(
                conn, row, "active", actor_id=None, actor_role="payment",
                reason=f"paid, reference {reference}", now=now,
            )  # fmt: skip
            ends_at = now + timedelta(minutes=row.duration_minutes)
            paid = await conn.fetchrow(
                f"UPDATE chat_sessions SET started_at = $2, ends_at = $3 WHERE id = $1"  # noqa: S608
                f" RETURNING {SESSION_COLUMNS}",
                session_id,
                now,
                ends_at,
            )
            row = ChatSession.from_written(paid)
            await cancel_timer(conn, "payment_timeout", session_id)
            await schedule_timer(conn, "session_expiry", session_id, ends_at)
            await arm_warnings(ctx, conn, session_id, ends_at, now)
            effects.append(session_changed(ctx, [row]))
            await record_effects(conn, now, effects)
    await run_after_commit(ctx, effects)
    return row


async def do_end_session(
    ctx: Context, *, session_id: UUID, principal: Principal, now: datetime
) -> ChatSession:
    """Either party ends it: active -> ended, pending_payment -> cancelled. A session
    already closed is returned as it is (idempotent: retries and both parties at once)."""
    async with ctx.db.transaction() as conn:
        row = await lock_as_party(conn, session_id, principal)
        if row.status not in OPEN_SESSION_STATUSES:
            return row
        role: ActorRole = "customer" if principal.role == "customer" else "mitra"
        row = await close_locked(
            conn, row, actor_id=principal.user_id, actor_role=role,
            reason=f"ended by the {principal.role}", now=now,
        )  # fmt: skip
        effects: list[AfterCommit] = [session_changed(ctx, [row])]
        await record_effects(conn, now, effects)
    await run_after_commit(ctx, effects)
    return row
