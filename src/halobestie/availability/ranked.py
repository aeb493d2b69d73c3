"""The ranked index: who the pairing blast may offer, in offer order, without reading the
pool.

`mitras:ranked` (a sorted set; `keys.ranked`) holds every mitra that is online, active and
below `MITRA_MAX_CONCURRENT_SESSIONS`, scored

    open sessions * 10^13 + idle-since (epoch milliseconds; 0 = never active)

so that the lowest score is the offer order: least loaded first, then longest idle. Idle
since is the later of Postgres' `mitras.last_active_at` (the latest start or end of one of
the mitra's sessions, kept by `load.record_session_change`) and the mitra's latest offer:
an offer is a turn, so concurrent requests rotate through the pool instead of herding on
the same few. 10^13 ms is the year 2286; Valkey scores are doubles, exact to 2^53, so
loads up to 900 keep every millisecond.

Kept by the same paths as the rest of the mirror: the write-through (`apply_mitra.lua`,
from committed Postgres state under the mitra's lock), the seed (rebuilt and swapped in
atomically, `merge_ranked.lua`) and the sweeps through them. Heartbeat freshness is not in
it (a heartbeat is no write to the index): `pick_offers.lua` checks each candidate's
heartbeat key as it walks, and a silent one loses its turn. The drift report compares it
with Postgres (`drift.py`); like heartbeats, an idle-since ahead of Postgres (an offer
made since) is not drift, behind is.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from .. import concepts
from ..clock import iso
from ..context import Context
from ..valkey.mirror import Client
from .queries import stale_cutoff
from .scripts import scripts

BAND = 10**13
# Candidates kept for the random draw among equal scores, per offered mitra: ties are the
# norm among mitras who never had a session (idle-since 0).
WINDOW_PER_OFFER = 4
# Index entries one pick looks at, at most. Only silent mitras (not yet swept offline) are
# skipped, and each loses its turn when skipped, so a pick meets each at most once per
# rotation; the bound keeps a mass disconnect from costing one request O(pool).
WALK_LIMIT = 2000


@dataclass(frozen=True)
class Contender:
    """A mitra the blast may offer: id, open sessions, idle since (None: never active)."""

    mitra_id: str
    load: int
    last_active_at: datetime | None


def epoch_ms(when: datetime | None) -> int:
    """Milliseconds since the epoch, 0 for None (never active: the idlest of all)."""
    if when is None:
        return 0
    return int(when.timestamp() * 1000)


def rank_score(load: int, idle_since: datetime | None) -> int:
    """The index score of a mitra: its load band, then its idle-since."""
    return load * BAND + epoch_ms(idle_since)


def split_score(score: float) -> tuple[int, int]:
    """(load, idle-since in epoch ms) of an index score."""
    load, idle = divmod(int(score), BAND)
    return load, idle


async def pick_from_index(
    ctx: Context, *, fanout: int, exclude: Sequence[str], now: datetime
) -> list[str]:
    """At most `fanout` fresh mitras from the ranked index, in offer order; each takes
    its turn (its idle-since becomes `now`). One Lua call, O(fanout) index entries.
    Raises MirrorUnavailable when Valkey cannot be used (the caller falls back)."""
    keys = ctx.keys

    async def pick(client: Client) -> Any:
        # Not on the auto-pipeline: a pick is not idempotent, so it must not be resent
        # after a dropped connection.
        return await scripts(ctx).pick_offers(
            keys=[keys.ranked],
            args=[
                keys.heartbeat(""),
                iso(stale_cutoff(ctx, now)),
                fanout,
                fanout * WINDOW_PER_OFFER,
                WALK_LIMIT,
                epoch_ms(now),
                secrets.randbelow(2**31 - 2) + 1,
                *exclude,
            ],
            client=client,
        )

    reply = await ctx.mirror.read("pairing", pick)
    return [str(m) for m in reply[0::2]]


# The Postgres fallback: the same order from `mitras_offer_rank_idx` (open_sessions,
# last_active_at NULLS FIRST) WHERE is_online AND is_active, walked with a LIMIT; fresh
# is judged from last_heartbeat_at, which the heartbeat writes itself while Valkey is out.
WINDOW_SQL = f"""
SELECT id::text, open_sessions, last_active_at
FROM mitras
WHERE {concepts.available("mitras", "$2", "$1")}
  AND id <> ALL($3::uuid[])
ORDER BY open_sessions, last_active_at NULLS FIRST
LIMIT $4
"""  # noqa: S608


async def window_from_postgres(
    ctx: Context, conn: asyncpg.Connection, *, fanout: int, exclude: Sequence[str], now: datetime
) -> list[Contender]:
    """The first `fanout * WINDOW_PER_OFFER` available mitras in index order (without
    the turns taken by offers, which only the pairing knows in Postgres). One index walk."""
    rows = await conn.fetch(
        WINDOW_SQL,
        ctx.settings.mitra_max_concurrent_sessions,
        stale_cutoff(ctx, now),
        list(exclude),
        fanout * WINDOW_PER_OFFER,
    )
    return [Contender(r["id"], r["open_sessions"], r["last_active_at"]) for r in rows]


OFFERABLE_SQL = """
SELECT id::text FROM mitras
WHERE id = ANY($1::uuid[]) AND is_online AND is_active AND open_sessions < $2
"""


async def offerable(ctx: Context, conn: asyncpg.Connection, mitra_ids: Sequence[str]) -> set[str]:
    """Postgres' last word: those of these mitras that are online, active and below
    capacity in committed state (the mirror may lag a write by a moment). One
    primary-key lookup per id."""
    rows = await conn.fetch(
        OFFERABLE_SQL, list(mitra_ids), ctx.settings.mitra_max_concurrent_sessions
    )
    return {r["id"] for r in rows}


def epoch_ms_to_datetime(ms: int) -> datetime | None:
    """The inverse of `epoch_ms` (None for 0)."""
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None
