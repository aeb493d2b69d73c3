"""Seed: rebuild the whole mirror from Postgres.

Runs at startup, on every Valkey reconnect (new server lifetime), on the reseed sweep
and by hand (`POST /api/admin/availability/reseed`). Under `locked_truth` (the seed
advisory lock, one REPEATABLE READ snapshot) it builds each set beside the live one,
then swaps them all in with one Lua script (RENAME over the live keys, with the
capacities), so readers see either the old sets or the new ones, never half of them.
One script rather than MULTI: atomic on a Valkey Cluster's node too (VALKEY_CLUSTER),
where valkey-py's cluster client has no transactions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..clock import iso
from ..context import Context
from ..logs import get_logger
from ..valkey.mirror import Client
from .drift import Drift, compare, read_mirrored
from .scripts import scripts
from .truth import MirrorState, locked_truth

log = get_logger(__name__)
CHUNK = 1000
# The sets being built expire unless swapped in: a seed killed halfway leaves nothing.
# Far above a seed's duration (~2 s at 100k online); swap_in.lua refuses a set that
# expired or is short.
BUILD_EXPIRY_SECONDS = 600


@dataclass(frozen=True)
class SeedCounts:
    online: int
    deactivated: int
    capacities: int
    heartbeats: int
    ranked: int = 0
    drift: Drift | None = None

    def as_dict(self) -> dict[str, int]:
        """What was written (the reseed endpoint's answer)."""
        return {
            "online": self.online,
            "deactivated": self.deactivated,
            "capacities": self.capacities,
            "heartbeats": self.heartbeats,
            "ranked": self.ranked,
        }


async def seed_mirror(ctx: Context, reason: str, *, measure_drift: bool = False) -> SeedCounts:
    """Replace the mirror with Postgres' truth. Raises MirrorUnavailable or
    DatabaseUnavailable; the caller decides whether to retry. With `measure_drift`, the
    differences found just before the swap, under the same lock, are in `counts.drift`."""
    started = ctx.clock.now()
    drift: Drift | None = None
    # A seed follows every (re)start of Valkey, whose script cache starts empty: load the
    # scripts now, or the first batch of heartbeats would all come back NOSCRIPT and be
    # retried one by one (valkey/autopipe.py).
    await ctx.mirror.raw("seed_scripts", lambda c: _load_scripts(ctx, c))
    async with locked_truth(ctx) as truth:
        if measure_drift:
            mirrored = await ctx.mirror.raw("drift", lambda c: read_mirrored(ctx, c))
            drift = compare(truth, mirrored)
        counts = await ctx.mirror.raw("seed", lambda c: _write(ctx, c, truth))
    counts = replace(counts, drift=drift)
    ctx.metrics.seeds.labels(reason=reason).inc()
    log.info("mirror_seeded", reason=reason, started_at=iso(started), **counts.as_dict())
    return counts


async def _load_scripts(ctx: Context, client: Any) -> None:
    for script in scripts(ctx).all:
        await client.script_load(script.script)


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _build_set(client: Client, tmp: str, members: Iterable[str]) -> int:
    """The new set beside the live one, expiring like the ranked index's (a seed killed
    before its swap leaves nothing behind); its size."""
    ordered = sorted(members)
    await client.delete(tmp)
    for n, chunk in enumerate(_chunks(ordered)):
        await client.sadd(tmp, *chunk)
        if n == 0:
            await client.expire(tmp, BUILD_EXPIRY_SECONDS)
    return len(ordered)


async def _write(ctx: Context, client: Client, truth: MirrorState) -> SeedCounts:
    keys = ctx.keys
    token = uuid.uuid4().hex
    online_tmp, deactivated_tmp = (
        keys.seed_tmp(f"online:{token}"),
        keys.seed_tmp(f"deactivated:{token}"),
    )
    # The new sets are built beside the live ones first (the ranked index merged so that
    # no turn moves backwards, see merge_ranked.lua), then swapped in with the capacities
    # by one script (swap_in.lua): atomic on one server and on a cluster's node alike.
    ranked_tmp = keys.seed_tmp(f"ranked:{token}")
    await client.delete(ranked_tmp)
    pairs = sorted(truth.ranked.items())
    for start in range(0, len(pairs), CHUNK):
        flat = [str(x) for pair in pairs[start : start + CHUNK] for x in pair]
        await scripts(ctx).merge_ranked(keys=[keys.ranked, ranked_tmp], args=flat, client=client)
    sizes = [
        await _build_set(client, online_tmp, truth.online),
        await _build_set(client, deactivated_tmp, truth.deactivated),
        len(pairs),
    ]
    capacities = sorted(truth.capacities.items())
    await scripts(ctx).swap_in(
        keys=[
            keys.online,
            keys.deactivated,
            keys.ranked,
            online_tmp,
            deactivated_tmp,
            ranked_tmp,
            keys.snapshot,
            *(keys.capacity(m) for m, _ in capacities),
        ],
        args=[*sizes, *(str(n) for _, n in capacities)],
        client=client,
    )

    # Heartbeats merge (never backwards), then keys of mitras that are not online go:
    # the heartbeat script only writes for members of the new online set, so none can
    # reappear after this scan.
    beats = sorted(truth.heartbeats.items())
    for start in range(0, len(beats), CHUNK):
        chunk = beats[start : start + CHUNK]
        await scripts(ctx).merge_heartbeats(
            keys=[keys.heartbeat(m) for m, _ in chunk], args=[t for _, t in chunk]
        )
    stale: list[str] = []
    async for key in client.scan_iter(match=keys.heartbeat_pattern, count=1000):
        if keys.id_from(key) not in truth.online:
            stale.append(key)
    # Absent reads as 0: capacity keys that Postgres no longer backs simply go.
    async for key in client.scan_iter(match=keys.capacity_pattern, count=1000):
        if keys.id_from(key) not in truth.capacities:
            stale.append(key)
    for batch in _chunks(stale):
        await client.delete(*batch)
    await client.set(keys.seeded, iso(ctx.clock.now()))
    return SeedCounts(
        online=len(truth.online),
        deactivated=len(truth.deactivated),
        capacities=len(truth.capacities),
        heartbeats=len(truth.heartbeats),
        ranked=len(truth.ranked),
    )
