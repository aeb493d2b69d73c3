"""The mirror as Postgres says it should be, read under the seed lock.

`locked_truth` holds the seed advisory lock exclusively (see `locks.py`) while it reads
one REPEATABLE READ snapshot and while the caller uses it: no mirror write can land in
between, so a seed swaps in exactly this truth and a drift report compares against it
without mistaking a write in flight for drift.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..clock import iso
from ..concepts import open_session
from ..context import Context
from . import locks
from .ranked import rank_score


@dataclass(frozen=True)
class MirrorState:
    """The mirrored facts: as Postgres says they should be (`read_truth`) or as Valkey
    holds them (`drift.read_mirrored`). `ranked`: the ranked index, mitra id -> score
    (`ranked.rank_score`)."""

    online: set[str]
    deactivated: set[str]
    capacities: dict[str, int]
    heartbeats: dict[str, str]
    ranked: dict[str, int]


TRUTH_SQL_MITRAS = """
SELECT id::text, is_online, is_active, last_heartbeat_at, last_active_at FROM mitras
WHERE is_online OR NOT is_active
"""
TRUTH_SQL_CAPACITY = f"""
SELECT mitra_id::text, count(*) FROM chat_sessions
WHERE {open_session()} GROUP BY mitra_id
"""  # noqa: S608


async def read_truth(conn: asyncpg.Connection, max_sessions: int) -> MirrorState:
    online: set[str] = set()
    deactivated: set[str] = set()
    heartbeats: dict[str, str] = {}
    last_active: dict[str, datetime | None] = {}
    rows = await conn.fetch(TRUTH_SQL_MITRAS)
    for mitra_id, is_online, is_active, heartbeat, last_active_at in rows:
        if is_online:
            online.add(mitra_id)
            if heartbeat is not None:
                heartbeats[mitra_id] = iso(heartbeat)
            if is_active:
                last_active[mitra_id] = last_active_at
        if not is_active:
            deactivated.add(mitra_id)
    counts = {mitra_id: n for mitra_id, n in await conn.fetch(TRUTH_SQL_CAPACITY)}
    # The capacity of every online mitra, 0 included, plus any mitra with open sessions.
    capacities = {mitra_id: counts.get(mitra_id, 0) for mitra_id in online}
    capacities.update(counts)
    ranked = {
        mitra_id: rank_score(capacities[mitra_id], when)
        for mitra_id, when in last_active.items()
        if capacities[mitra_id] < max_sessions
    }
    return MirrorState(online, deactivated, capacities, heartbeats, ranked)


@asynccontextmanager
async def locked_truth(ctx: Context) -> AsyncIterator[MirrorState]:
    # A session-level lock, held across the caller's Valkey writes (seconds at 100k
    # mitras: longer than the idle-in-transaction bound allows a transaction to wait), so
    # on a connection whose server session stays ours: `direct()` (DATABASE_DIRECT_URL).
    async with ctx.db.direct() as conn:
        await conn.execute("SELECT pg_advisory_lock($1::int, $2::int)", locks.NAMESPACE, locks.SEED)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                truth = await read_truth(conn, ctx.settings.mitra_max_concurrent_sessions)
            yield truth
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock($1::int, $2::int)", locks.NAMESPACE, locks.SEED
            )
