"""Drift report: the mirror against Postgres, difference by difference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..clock import iso, parse_iso
from ..context import Context
from ..valkey.mirror import Client
from .ranked import epoch_ms_to_datetime, split_score
from .truth import MirrorState, locked_truth


@dataclass
class Drift:
    online: dict[str, list[str]] = field(default_factory=lambda: {"missing": [], "extra": []})
    deactivated: dict[str, list[str]] = field(default_factory=lambda: {"missing": [], "extra": []})
    capacity: dict[str, dict[str, int]] = field(default_factory=dict)
    heartbeat: dict[str, dict[str, str | None]] = field(default_factory=dict)
    # The ranked index (an addition to SPEC's four): who is missing or extra, and whose
    # load or idle-since is behind Postgres'.
    ranked: dict[str, Any] = field(
        default_factory=lambda: {"missing": [], "extra": [], "score": {}}
    )

    @property
    def count(self) -> int:
        return (
            sum(len(v) for v in self.online.values())
            + sum(len(v) for v in self.deactivated.values())
            + len(self.capacity)
            + len(self.heartbeat)
            + len(self.ranked["missing"])
            + len(self.ranked["extra"])
            + len(self.ranked["score"])
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_sync": self.count == 0,
            "differences": {
                "online": self.online,
                "deactivated": self.deactivated,
                "capacity": self.capacity,
                "heartbeat": self.heartbeat,
                "ranked": self.ranked,
            },
        }


async def _scan_values(
    client: Client, pattern: str, id_from: Callable[[str], str]
) -> dict[str, str]:
    keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
    values: dict[str, str] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        for key, value in zip(chunk, await client.mget(chunk), strict=True):
            if value is not None:
                values[id_from(key)] = value
    return values


async def read_mirrored(ctx: Context, client: Client) -> MirrorState:
    keys = ctx.keys
    capacities = await _scan_values(client, keys.capacity_pattern, keys.id_from)
    return MirrorState(
        online=set(await client.smembers(keys.online)),
        deactivated=set(await client.smembers(keys.deactivated)),
        capacities={k: int(v) for k, v in capacities.items()},
        heartbeats=await _scan_values(client, keys.heartbeat_pattern, keys.id_from),
        ranked={
            m: int(score) for m, score in await client.zrange(keys.ranked, 0, -1, withscores=True)
        },
    )


async def compute_drift(ctx: Context) -> Drift:
    """Raises MirrorUnavailable when Valkey cannot be read (the caller answers 503)."""
    async with locked_truth(ctx) as truth:
        mirrored = await ctx.mirror.raw("drift", lambda c: read_mirrored(ctx, c))
    return compare(truth, mirrored)


def compare(truth: MirrorState, mirrored: MirrorState) -> Drift:
    online, deactivated = mirrored.online, mirrored.deactivated
    capacities, heartbeats = mirrored.capacities, mirrored.heartbeats
    drift = Drift()
    drift.online = {
        "missing": sorted(truth.online - online),
        "extra": sorted(online - truth.online),
    }
    drift.deactivated = {
        "missing": sorted(truth.deactivated - deactivated),
        "extra": sorted(deactivated - truth.deactivated),
    }
    for mitra_id in sorted(set(truth.capacities) | set(capacities)):
        want, have = truth.capacities.get(mitra_id, 0), capacities.get(mitra_id, 0)
        if want != have:
            drift.capacity[mitra_id] = {"valkey": have, "postgres": want}
    for mitra_id in sorted(set(truth.heartbeats) | set(heartbeats) | truth.online):
        want_s, have_s = truth.heartbeats.get(mitra_id), heartbeats.get(mitra_id)
        if mitra_id not in truth.online:
            if have_s is not None:  # a heartbeat for a mitra that is not online
                drift.heartbeat[mitra_id] = {"valkey": have_s, "postgres": want_s}
            continue
        # Valkey ahead of Postgres is the write-back lag, not drift; behind or missing is.
        if want_s is not None and (have_s is None or parse_iso(have_s) < parse_iso(want_s)):
            drift.heartbeat[mitra_id] = {"valkey": have_s, "postgres": want_s}
    drift.ranked = _compare_ranked(truth.ranked, mirrored.ranked)
    return drift


def _readable(score: int) -> dict[str, Any]:
    load, idle = split_score(score)
    when = epoch_ms_to_datetime(idle)
    return {"open_sessions": load, "idle_since": iso(when) if when else None}


def _compare_ranked(want: dict[str, int], have: dict[str, int]) -> dict[str, Any]:
    """Members must match and each load too; an idle-since ahead of Postgres' is an offer
    made since (Valkey-only, like a heartbeat not yet written back), behind is drift."""
    score: dict[str, Any] = {}
    for mitra_id in sorted(set(want) & set(have)):
        (want_load, want_idle), (have_load, have_idle) = (
            split_score(want[mitra_id]),
            split_score(have[mitra_id]),
        )
        if want_load != have_load or have_idle < want_idle:
            score[mitra_id] = {
                "valkey": _readable(have[mitra_id]),
                "postgres": _readable(want[mitra_id]),
            }
    return {
        "missing": sorted(set(want) - set(have)),
        "extra": sorted(set(have) - set(want)),
        "score": score,
    }
