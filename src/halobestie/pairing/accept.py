"""A mitra accepts an offer: the first accept wins, exactly once.

One transaction: the request row is locked (FOR UPDATE), so concurrent accepts of one
request queue on it and each sees what the one before did; the mitra's row is locked
too, so two accepts of different requests by one mitra cannot both pass the capacity
check, and the mitra's eligibility (active) is checked under the lock its deactivation
takes. The winner's session is created in `pending_payment` with its payment timer, the
request becomes `matched` and its expiry timer is cancelled; capacity and events follow
after the commit.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from ..aftercommit import AfterCommit, run_after_commit
from ..concepts import open_session
from ..context import Context
from ..errors import (
    AlreadyTaken,
    AtCapacity,
    MitraDeactivated,
    NotFound,
    NotOffered,
    RequestClosed,
)
from ..events.announce import record_effects
from ..sessions import actions as session_actions
from ..sessions.models import SESSION_COLUMNS, ChatSession
from ..sessions.transitions import session_changed
from ..timers import cancel_timer
from .actions import publish
from .models import PairingRequest
from .queries import lock_request, offered_mitras

OPEN_SESSIONS_SQL = f"""
SELECT count(*) FROM chat_sessions WHERE mitra_id = $1 AND {open_session()}
"""  # noqa: S608


async def _previous_win(
    conn: asyncpg.Connection, request: PairingRequest, mitra_id: UUID
) -> ChatSession | None:
    """The session this mitra already won for this request (an accept retried after a
    lost response), or None when another mitra won it."""
    if request.session_id is None:
        return None
    row = await conn.fetchrow(
        f"SELECT {SESSION_COLUMNS} FROM chat_sessions"  # noqa: S608
        " WHERE id = $1 AND mitra_id = $2",
        request.session_id,
        mitra_id,
    )
    return None if row is None else ChatSession.from_row(row)


async def _lock_eligible(ctx: Context, conn: asyncpg.Connection, mitra_id: UUID) -> None:
    """Lock the mitra's row and check, under that lock, what the accept depends on: the
    mitra is active and has capacity left. Deactivation takes this row too, so it either
    committed before (refused here: 403) or waits for this accept to commit and then
    closes the session it created (`sessions.deactivation.do_set_mitra_active`). Being
    online is not required: going offline means "offer me nothing new", and an offer
    already made stays the mitra's to take (an accept is also proof of life)."""
    is_active = await conn.fetchval(
        "SELECT is_active FROM mitras WHERE id = $1 FOR NO KEY UPDATE", mitra_id
    )
    if is_active is None:
        raise NotFound(f"no mitra with id {mitra_id}")
    if not is_active:
        raise MitraDeactivated(f"mitra {mitra_id} is deactivated")
    open_sessions = await conn.fetchval(OPEN_SESSIONS_SQL, mitra_id)
    limit = ctx.settings.mitra_max_concurrent_sessions
    if open_sessions >= limit:
        raise AtCapacity(
            f"mitra {mitra_id} already has {open_sessions} open session(s) (limit {limit})"
        )


async def do_accept_pairing_request(
    ctx: Context, *, mitra_id: UUID, request_id: UUID, now: datetime
) -> ChatSession:
    """The new chat session (or, for a retried winning accept, the one it won).
    NotOffered, RequestClosed (expired, cancelled or past its expiry), AlreadyTaken,
    MitraDeactivated, AtCapacity otherwise."""
    effects: list[AfterCommit] = []
    async with ctx.db.transaction() as conn:
        request = await lock_request(conn, request_id)
        mitras = await offered_mitras(conn, request_id)
        if mitra_id not in mitras:
            raise NotOffered(f"pairing request {request_id} was not offered to mitra {mitra_id}")
        status = request.status
        if status == "matched":
            won = await _previous_win(conn, request, mitra_id)
            if won is not None:
                return won
            raise AlreadyTaken(f"pairing request {request_id} was taken by another mitra")
        if status != "searching" or request.expires_at <= now:
            closed = status if status != "searching" else "expired"
            raise RequestClosed(f"pairing request {request_id} is {closed}")
        await _lock_eligible(ctx, conn, mitra_id)
        session = await session_actions.create_pending_session(
            ctx,
            conn,
            customer_id=request.customer_id,
            mitra_id=mitra_id,
            duration_minutes=request.duration_minutes,
            pairing_request_id=request_id,
            actor_id=mitra_id,
            now=now,
        )
        await conn.execute(
            "UPDATE pairing_requests SET status = 'matched', session_id = $2, closed_at = $3"
            " WHERE id = $1",
            request_id,
            session.id,
            now,
        )
        await cancel_timer(conn, "offer_expiry", request_id)
        others = [m for m in mitras if m != mitra_id]
        effects.append(publish(ctx, others, "pairing.taken", {"request_id": str(request_id)}))
        effects.insert(0, session_changed(ctx, [session]))
        await record_effects(conn, now, effects)
    await run_after_commit(ctx, effects)
    return session
