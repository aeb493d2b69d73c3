"""Reads behind the operator console: the overview (counts, sessions, beacon, health),
one page of the mitra list, and the latest session status changes.

Availability comes from Valkey with the engine's Postgres fallback (`find_pool`), like
every other reader; sessions come from Postgres (their truth). Each part is bounded: the
list pages by id with a LIMIT, the session counts use the partial index of open sessions
and the newest RECENT_ROWS status changes only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from ..availability.beacon import get_beacon
from ..availability.queries import find_pool, stale_cutoff
from ..clock import iso, parse_iso
from ..concepts import open_session
from ..context import Context
from ..db import UNREACHABLE
from ..errors import DatabaseBusy, DatabaseUnavailable, MirrorUnavailable, ServiceUnavailable
from ..events.bus import bus
from ..valkey.mirror import Client
from .models import (
    Beacon,
    Health,
    MitraCounts,
    MitraFilter,
    MitraPage,
    MitraRow,
    MitraState,
    OpenSession,
    Overview,
    SessionCounts,
    SessionEvent,
    SessionEvents,
)

# Sessions closed within this window are counted, from the newest RECENT_ROWS changes.
RECENT_WINDOW_SECONDS = 600
RECENT_ROWS = 5000
# A page filtered on a heartbeat-derived state looks at this many mitras at most.
SCAN_LIMIT = 5000
FIRST_ID = UUID(int=0)

# -- overview ------------------------------------------------------------------------

COUNTS_SQL = """
SELECT count(*) FILTER (WHERE is_online) AS online,
       count(*) FILTER (WHERE NOT is_active) AS deactivated
FROM mitras
"""


async def _scards(ctx: Context, client: Client) -> tuple[int, int]:
    async with client.pipeline(transaction=False) as pipe:
        pipe.scard(ctx.keys.online)
        pipe.scard(ctx.keys.deactivated)
        online, deactivated = await pipe.execute()
    return int(online), int(deactivated)


async def mitra_counts(ctx: Context, now: datetime) -> MitraCounts:
    """Valkey first (SCARD x2 and the pool), Postgres when the mirror is unusable.
    DatabaseUnavailable only when both are down."""
    try:
        scards: tuple[int, int] | None = await ctx.mirror.read("console", lambda c: _scards(ctx, c))
    except MirrorUnavailable:
        scards = None
    pool = await find_pool(ctx, now, reader="console")
    if scards is None or pool.source != "valkey":
        async with ctx.db.connection() as conn:
            row = await conn.fetchrow(COUNTS_SQL)
        scards, source = (int(row["online"]), int(row["deactivated"])), "postgres"
    else:
        source = "valkey"
    online, deactivated = scards
    reachable, available = len(pool.reachable), len(pool.available)
    return MitraCounts(
        online=online,
        available=available,
        busy=reachable - available,
        stale=max(online - reachable, 0),
        deactivated=deactivated,
        source=source,  # type: ignore[arg-type]
    )


OPEN_SESSIONS_SQL = f"""
SELECT count(*) FILTER (WHERE status = 'pending_payment') AS pending_payment,
       count(*) FILTER (WHERE status = 'active') AS active,
       (SELECT max(id) FROM chat_session_events) AS last_event_id
FROM chat_sessions WHERE {open_session()}
"""  # noqa: S608
RECENT_SQL = """
SELECT to_status, count(*) FILTER (WHERE at > $1) AS n, count(*) AS seen, min(at) AS oldest
FROM (SELECT to_status, at FROM chat_session_events ORDER BY id DESC LIMIT $2) recent
GROUP BY to_status
"""
CLOSED = ("ended", "expired", "cancelled", "rerouted")
DOWN: tuple[type[Exception], ...] = (DatabaseUnavailable, *UNREACHABLE)


async def session_counts(ctx: Context, now: datetime) -> tuple[SessionCounts, int]:
    """(counts, newest status change id or 0). Two statements: the open sessions by the
    partial index, and a backward walk of the newest RECENT_ROWS status changes."""
    cutoff = now - timedelta(seconds=RECENT_WINDOW_SECONDS)
    async with ctx.db.connection() as conn:
        open_row = await conn.fetchrow(OPEN_SESSIONS_SQL)
        recent = await conn.fetch(RECENT_SQL, cutoff, RECENT_ROWS)
    closed = {r["to_status"]: int(r["n"]) for r in recent}
    seen = sum(int(r["seen"]) for r in recent)
    oldest = min((r["oldest"] for r in recent), default=None)
    counts = SessionCounts(
        pending_payment=int(open_row["pending_payment"]),
        active=int(open_row["active"]),
        **{status: closed.get(status, 0) for status in CLOSED},
        window_seconds=RECENT_WINDOW_SECONDS,
        truncated=seen >= RECENT_ROWS and oldest is not None and oldest > cutoff,
    )
    return counts, int(open_row["last_event_id"] or 0)


async def postgres_state(ctx: Context) -> str:
    """ok | unavailable | busy, within DATABASE_TIMEOUT_SECONDS."""
    try:
        async with asyncio.timeout(ctx.settings.database_timeout_seconds):
            async with ctx.db.connection() as conn:
                await conn.fetchval("SELECT 1")
    except DatabaseBusy:
        return "busy"
    except DOWN:
        return "unavailable"
    return "ok"


def health(ctx: Context, postgres: str) -> Health:
    mirror = ctx.mirror
    usable = mirror.enabled and mirror.trusted and mirror.reachable
    return Health(
        postgres=postgres,  # type: ignore[arg-type]
        valkey="disabled" if not mirror.enabled else "ok" if usable else "degraded",
        valkey_reachable=mirror.enabled and mirror.reachable,
        mirror_trusted=mirror.trusted,
        fallback=not usable,
        events_subscribed=bus(ctx).subscribed,
        instance_id=bus(ctx).instance_id,
    )


async def overview(ctx: Context, now: datetime) -> Overview:
    """Never raises for an outage: what cannot be read is null, and `health` says why.
    Postgres is asked first with a bounded ping, so an outage costs one timeout, not one
    per part."""
    postgres = await postgres_state(ctx)
    sessions: SessionCounts | None = None
    last_event_id: int | None = None
    if postgres == "ok":
        try:
            sessions, last_event_id = await session_counts(ctx, now)
        except ServiceUnavailable:
            pass
    try:
        mitras = await mitra_counts(ctx, now)
    except ServiceUnavailable:  # both down: nothing to count with
        mitras = MitraCounts(
            online=0, available=0, busy=0, stale=0, deactivated=0, source="postgres"
        )
    try:
        beacon: Beacon | None = Beacon.model_validate(await get_beacon(ctx, now))
    except ServiceUnavailable:
        beacon = None
    return Overview(
        sampled_at=iso(now),
        mitras=mitras,
        sessions=sessions,
        beacon=beacon,
        health=health(ctx, postgres),
        last_event_id=last_event_id,
    )


# -- the mitra list --------------------------------------------------------------------

PAGE_SQL = """
SELECT m.id, u.email, u.display_name, m.is_online, m.is_active, m.last_heartbeat_at,
       m.open_sessions
FROM mitras m JOIN users u ON u.id = m.id
WHERE m.id > $1 {condition}
ORDER BY m.id LIMIT $2
"""


@dataclass(frozen=True, slots=True)
class _Listed:
    """A row of PAGE_SQL: a mitra as the list reads it from Postgres."""

    id: UUID
    email: str
    display_name: str
    is_online: bool
    is_active: bool
    last_heartbeat_at: datetime | None
    open_sessions: int


# Each condition is served in id order by an index: the primary key, or the partial
# indexes of online and deactivated mitras.
CONDITIONS: dict[str, str] = {
    "all": "",
    "online": "AND m.is_online",
    "available": "AND m.is_online",
    "busy": "AND m.is_online",
    "stale": "AND m.is_online",
    "offline": "AND NOT m.is_online AND m.is_active",
    "deactivated": "AND NOT m.is_active",
}
DERIVED = frozenset({"available", "busy", "stale"})
OPEN_SQL = f"""
SELECT id, mitra_id, customer_id, status, created_at, ends_at
FROM chat_sessions
WHERE mitra_id = ANY($1::uuid[]) AND {open_session()}
ORDER BY created_at, id
"""  # noqa: S608


async def _heartbeats(ctx: Context, ids: list[str]) -> dict[str, str | None] | None:
    """Valkey's heartbeat of each id (ahead of Postgres by up to one write-back); None
    when the mirror cannot be read."""
    if not ids:
        return {}
    try:
        values = await ctx.mirror.read(
            "console", lambda c: c.mget([ctx.keys.heartbeat(i) for i in ids])
        )
    except MirrorUnavailable:
        return None
    return dict(zip(ids, values, strict=True))


def _state(
    row: _Listed, heartbeat: datetime | None, stale_before: datetime, capacity: int
) -> MitraState:
    if not row.is_active:
        return "deactivated"
    if not row.is_online:
        return "offline"
    if heartbeat is None or heartbeat <= stale_before:
        return "stale"
    return "busy" if row.open_sessions >= capacity else "available"


async def mitra_page(
    ctx: Context, now: datetime, filter_: MitraFilter, after: UUID | None, limit: int
) -> MitraPage:
    """`limit` rows after `after` in id order matching `filter_`. Raises
    DatabaseUnavailable while Postgres is down (the list is Postgres' rows)."""
    settings = ctx.settings
    capacity = settings.mitra_max_concurrent_sessions
    stale_before = stale_cutoff(ctx, now)
    cursor = after or FIRST_ID
    derived = filter_ in DERIVED
    sql = PAGE_SQL.format(condition=CONDITIONS[filter_])
    picked: list[tuple[_Listed, datetime | None, MitraState]] = []
    next_after: str | None = None
    from_valkey = True
    scanned = 0
    async with ctx.db.connection() as conn:
        while True:
            want = min(max(limit * 4, 200), SCAN_LIMIT - scanned) if derived else limit + 1
            rows = [_Listed(**r) for r in await conn.fetch(sql, cursor, want)]
            scanned += len(rows)
            valkey = await _heartbeats(ctx, [str(r.id) for r in rows if r.is_online])
            from_valkey = from_valkey and valkey is not None
            for row in rows:
                beat = row.last_heartbeat_at
                seen = (valkey or {}).get(str(row.id))
                if seen is not None:
                    beat = max(parse_iso(seen), beat or parse_iso(seen))
                state = _state(row, beat, stale_before, capacity)
                if derived and state != filter_:
                    continue
                if len(picked) == limit:  # one more exists: the page is full
                    next_after = str(picked[-1][0].id)
                    break
                picked.append((row, beat, state))
            if next_after is not None or len(rows) < want:
                break  # full, or the end of the list
            cursor = rows[-1].id
            if scanned >= SCAN_LIMIT:
                next_after = str(cursor)  # a short page: the next one goes on from here
                break
        ids = [r.id for r, _, _ in picked]
        sessions = await conn.fetch(OPEN_SQL, ids) if ids else []
    by_mitra: dict[UUID, list[OpenSession]] = {}
    payment_window = timedelta(seconds=settings.payment_timeout_seconds)
    for s in sessions:
        deadline = s["ends_at"] if s["status"] == "active" else s["created_at"] + payment_window
        by_mitra.setdefault(s["mitra_id"], []).append(
            OpenSession(
                id=str(s["id"]),
                customer_id=str(s["customer_id"]),
                status=s["status"],
                deadline=iso(deadline),
                seconds_left=round((deadline - now).total_seconds(), 1),
            )
        )
    return MitraPage(
        mitras=[
            MitraRow(
                id=str(row.id),
                email=row.email,
                display_name=row.display_name,
                state=state,
                is_online=row.is_online,
                is_active=row.is_active,
                open_sessions=row.open_sessions,
                capacity=capacity,
                last_heartbeat_at=iso(beat) if beat else None,
                heartbeat_age_seconds=round((now - beat).total_seconds(), 1) if beat else None,
                sessions=by_mitra.get(row.id, []),
            )
            for row, beat, state in picked
        ],
        next_after=next_after,
        filter=filter_,
        server_now=iso(now),
        heartbeats_from="valkey" if from_valkey and not health(ctx, "ok").fallback else "postgres",
    )


# -- recent session events -------------------------------------------------------------

EVENTS_SQL = """
SELECT e.id, e.at, e.session_id, e.from_status, e.to_status, e.actor_role, e.reason,
       s.mitra_id, s.customer_id, u.display_name AS mitra_name
FROM chat_session_events e
JOIN chat_sessions s ON s.id = e.session_id
JOIN users u ON u.id = s.mitra_id
WHERE e.id > $1
ORDER BY e.id DESC LIMIT $2
"""


async def session_events(ctx: Context, after_id: int, limit: int) -> SessionEvents:
    """The newest `limit` status changes with an id above `after_id`, newest first."""
    async with ctx.db.connection() as conn:
        rows = await conn.fetch(EVENTS_SQL, after_id, limit)
    return SessionEvents(
        events=[
            SessionEvent(
                id=r["id"],
                at=iso(r["at"]),
                session_id=str(r["session_id"]),
                from_status=r["from_status"],
                to_status=r["to_status"],
                actor_role=r["actor_role"],
                reason=r["reason"],
                mitra_id=str(r["mitra_id"]),
                mitra_name=r["mitra_name"],
                customer_id=str(r["customer_id"]),
            )
            for r in rows
        ]
    )
