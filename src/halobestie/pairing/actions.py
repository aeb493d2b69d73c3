"""Writes of a pairing request while it searches: open, cancel, expire. The two writes
that cross into chat sessions have modules of their own: `accept.py` (a request becomes
a session) and `reroute.py` (a session becomes a new request).

Every write runs in one transaction and returns its side effects (events) as callables
run after the commit, never inside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from ..aftercommit import AfterCommit, run_after_commit
from ..availability.queries import mitra_reachability
from ..availability.ranked import offerable, pick_from_index, window_from_postgres
from ..context import Context
from ..errors import InvalidState, MirrorUnavailable, NoMitraAvailable, NotFound
from ..events.announce import announce, record_effects
from ..logs import get_logger
from ..timers import cancel_timer, schedule_timer
from .models import REQUEST_COLUMNS, OfferedRequest, PairingRequest
from .queries import last_offered, lock_request, offered_mitras
from .ranking import Contender, rank

log = get_logger(__name__)

ONE_SEARCHING_INDEX = "pairing_requests_one_searching_idx"


# -- after commit --------------------------------------------------------------------


def publish(ctx: Context, users: Iterable[UUID], type_: str, data: dict[str, Any]) -> AfterCommit:
    """One event for these users: recorded by `record_effects` at the end of the
    transaction, delivered after commit (events/announce.py)."""
    return announce(ctx, users, type_, data)


# -- open ----------------------------------------------------------------------------


async def _choose(
    ctx: Context,
    conn: asyncpg.Connection,
    *,
    preferred_mitra_id: UUID | None,
    exclude: set[UUID],
    now: datetime,
) -> list[str]:
    """The mitras to offer, in offer order; NoMitraAvailable when there are none.

    Work proportional to the fan-out, never to the pool: the ranked index in Valkey
    picks (one Lua call), Postgres has the last word on those few (one primary-key
    lookup each). A pick that Postgres refuses entirely (the mirror lagging a write)
    is tried once more without them."""
    if preferred_mitra_id is not None:
        return await _preferred(ctx, conn, preferred_mitra_id, exclude, now)
    fanout = ctx.settings.pairing_fanout
    skip = sorted(str(m) for m in exclude)
    for _ in range(2):
        try:
            picked = await pick_from_index(ctx, fanout=fanout, exclude=skip, now=now)
        except MirrorUnavailable:
            ctx.metrics.fallback_reads.labels(reader="pairing").inc()
            picked = await _pick_from_postgres(ctx, conn, fanout=fanout, exclude=skip, now=now)
        if not picked:
            break
        allowed = await offerable(ctx, conn, picked)
        chosen = [m for m in picked if m in allowed]
        if chosen:
            return chosen
        skip.extend(picked)
    raise NoMitraAvailable("no mitra is available right now; try again shortly")


async def _pick_from_postgres(
    ctx: Context, conn: asyncpg.Connection, *, fanout: int, exclude: list[str], now: datetime
) -> list[str]:
    """While Valkey is out: the index's order from Postgres (a LIMITed index walk), with
    each candidate's latest offer counted as activity, so that successive requests
    rotate through the window instead of all going to its first few."""
    window = await window_from_postgres(ctx, conn, fanout=fanout, exclude=exclude, now=now)
    offered = await last_offered(conn, [c.mitra_id for c in window])
    contenders = [
        Contender(c.mitra_id, c.load, _later(c.last_active_at, offered.get(c.mitra_id)))
        for c in window
    ]
    return rank(contenders, fanout)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


async def _preferred(
    ctx: Context, conn: asyncpg.Connection, mitra_id: UUID, exclude: set[UUID], now: datetime
) -> list[str]:
    """The preferred mitra alone, if available now (Valkey's view, then Postgres' last
    word); NotFound for an id that is no mitra."""
    reach = await mitra_reachability(ctx, mitra_id, now)  # NotFound for an unknown id
    wanted = str(mitra_id)
    if reach.available and mitra_id not in exclude and await offerable(ctx, conn, [wanted]):
        return [wanted]
    raise NoMitraAvailable(f"mitra {mitra_id} is not available right now")


async def _expire_locked(conn: asyncpg.Connection, request_id: UUID, now: datetime) -> UUID | None:
    """searching -> expired (no-op otherwise); its customer's id when it changed."""
    customer_id: UUID | None = await conn.fetchval(
        "UPDATE pairing_requests SET status = 'expired', closed_at = $2"
        " WHERE id = $1 AND status = 'searching' RETURNING customer_id",
        request_id,
        now,
    )
    return customer_id


async def _expired_effects(
    ctx: Context, conn: asyncpg.Connection, request_id: UUID, customer_id: UUID, reason: str
) -> list[AfterCommit]:
    mitras = await offered_mitras(conn, request_id)
    data = {"request_id": str(request_id), "reason": reason}
    return [publish(ctx, [customer_id, *mitras], "pairing.expired", data)]


async def _settle_previous_search(
    ctx: Context, conn: asyncpg.Connection, customer_id: UUID, now: datetime
) -> list[AfterCommit]:
    """One search per customer: a live one is a conflict; one past its expiry whose
    timer has not fired yet is expired here and now, so it does not block."""
    row = await conn.fetchrow(
        f"SELECT {REQUEST_COLUMNS} FROM pairing_requests"  # noqa: S608
        " WHERE customer_id = $1 AND status = 'searching' FOR UPDATE",
        customer_id,
    )
    if row is None:
        return []
    previous = PairingRequest.from_row(row)
    if previous.expires_at > now:
        raise InvalidState(
            f"customer {customer_id} already has a searching pairing request {previous.id};"
            " cancel it or wait for it to expire"
        )
    await _expire_locked(conn, previous.id, now)
    await cancel_timer(conn, "offer_expiry", previous.id)
    return await _expired_effects(ctx, conn, previous.id, customer_id, "timeout")


async def open_pairing_request(
    ctx: Context,
    conn: asyncpg.Connection,
    *,
    customer_id: UUID,
    duration_minutes: int,
    preferred_mitra_id: UUID | None,
    exclude: set[UUID],
    rerouted_from: UUID | None,
    now: datetime,
) -> tuple[OfferedRequest, list[AfterCommit]]:
    """Inside the caller's transaction: the request, its offers and its expiry timer.
    Returns the request (with the mitras offered it) and the after-commit effects (the
    `pairing.offer` events). Raises NoMitraAvailable (nobody, or the preferred mitra is
    not available), NotFound (unknown preferred mitra), InvalidState (a search already
    open)."""
    effects = await _settle_previous_search(ctx, conn, customer_id, now)
    chosen = await _choose(
        ctx, conn, preferred_mitra_id=preferred_mitra_id, exclude=exclude, now=now
    )
    expires_at = now + timedelta(seconds=ctx.settings.pairing_offer_ttl_seconds)
    try:
        async with conn.transaction():  # a savepoint: the violation below is ours to explain
            inserted = await conn.fetchrow(
                f"""
                INSERT INTO pairing_requests (customer_id, duration_minutes,
                    preferred_mitra_id, status, rerouted_from, expires_at, created_at)
                VALUES ($1, $2, $3, 'searching', $4, $5, $6)
                RETURNING {REQUEST_COLUMNS}
                """,  # noqa: S608
                customer_id,
                duration_minutes,
                preferred_mitra_id,
                rerouted_from,
                expires_at,
                now,
            )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != ONE_SEARCHING_INDEX:
            raise
        raise InvalidState(
            f"customer {customer_id} already has a searching pairing request"
        ) from None
    request = PairingRequest.from_written(inserted)
    await conn.execute(
        "INSERT INTO pairing_offers (request_id, mitra_id, created_at)"
        " SELECT $1, unnest($2::uuid[]), $3",
        request.id,
        chosen,
        now,
    )
    await schedule_timer(conn, "offer_expiry", request.id, expires_at)
    offered = OfferedRequest.of(request, chosen)
    effects.append(publish(ctx, offered.offered_to, "pairing.offer", request.offer().public()))
    return offered, effects


async def do_open_pairing_request(
    ctx: Context,
    *,
    customer_id: UUID,
    duration_minutes: int,
    preferred_mitra_id: UUID | None,
    now: datetime,
) -> OfferedRequest:
    async with ctx.db.transaction() as conn:
        offered, effects = await open_pairing_request(
            ctx,
            conn,
            customer_id=customer_id,
            duration_minutes=duration_minutes,
            preferred_mitra_id=preferred_mitra_id,
            exclude=set(),
            rerouted_from=None,
            now=now,
        )
        await record_effects(conn, now, effects)
    await run_after_commit(ctx, effects)
    return offered


# -- cancel --------------------------------------------------------------------------


async def do_cancel_pairing_request(
    ctx: Context, *, customer_id: UUID, request_id: UUID, now: datetime
) -> OfferedRequest:
    """searching -> cancelled; cancelling a cancelled request returns it unchanged;
    InvalidState once matched or expired."""
    effects: list[AfterCommit] = []
    async with ctx.db.transaction() as conn:
        request = await lock_request(conn, request_id)
        if request.customer_id != customer_id:
            raise NotFound(f"no pairing request with id {request_id}")
        mitras = await offered_mitras(conn, request_id)
        if request.status in ("matched", "expired"):
            raise InvalidState(
                f"pairing request {request_id} is {request.status}; it cannot be cancelled"
            )
        if request.status == "searching":
            cancelled = await conn.fetchrow(
                "UPDATE pairing_requests SET status = 'cancelled', closed_at = $2"  # noqa: S608
                f" WHERE id = $1 RETURNING {REQUEST_COLUMNS}",
                request_id,
                now,
            )
            request = PairingRequest.from_written(cancelled)
            await cancel_timer(conn, "offer_expiry", request_id)
            data = {"request_id": str(request_id), "reason": "cancelled"}
            effects.append(publish(ctx, [customer_id, *mitras], "pairing.expired", data))
            await record_effects(conn, now, effects)
    await run_after_commit(ctx, effects)
    return OfferedRequest.of(request, mitras)


# -- expiry (durable timer) ----------------------------------------------------------


async def expire_offer(
    ctx: Context, conn: asyncpg.Connection, request_id: UUID, now: datetime
) -> list[AfterCommit]:
    """The `offer_expiry` timer: searching -> expired inside the firing transaction.
    A request matched or cancelled meanwhile is left alone (its timer was cancelled
    too; this guards a race with that)."""
    customer_id = await _expire_locked(conn, request_id, now)
    if customer_id is None:
        return []
    return await _expired_effects(ctx, conn, request_id, customer_id, "timeout")
