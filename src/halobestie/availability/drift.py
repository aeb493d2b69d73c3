"""Drift report: the mirror against Postgres, difference by difference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..clock import parse_iso
from ..context import Context
from .mirror import Client
from .seed import Truth, read_truth


@dataclass
class Drift:
    online: dict[str, list[str]] = field(default_factory=lambda: {"missing": [], "extra": []})
    deactivated: dict[str, list[str]] = field(default_factory=lambda: {"missing": [], "extra": []})
    capacity: dict[str, dict[str, int]] = field(default_factory=dict)
    heartbeat: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return (
            sum(len(v) for v in self.online.values())
            + sum(len(v) for v in self.deactivated.values())
            + len(self.capacity)
            + len(self.heartbeat)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_sync": self.count == 0,
            "differences": {
                "online": self.online,
                "deactivated": self.deactivated,
                "capacity": self.capacity,
                "heartbeat": self.heartbeat,
            },
        }


async def _read_valkey(
    ctx: Context, client: Client
) -> tuple[set[str], set[str], dict[str, int], dict[str, str]]:
    keys = ctx.keys
    online = set(await client.smembers(keys.online))
    deactivated = set(await client.smembers(keys.deactivated))
    capacities: dict[str, int] = {}
    async for key in client.scan_iter(match=keys.capacity_pattern, count=1000):
        value = await client.get(key)
        if value is not None:
            capacities[keys.id_from(key)] = int(value)
    heartbeats: dict[str, str] = {}
    async for key in client.scan_iter(match=keys.heartbeat_pattern, count=1000):
        value = await client.get(key)
        if value is not None:
            heartbeats[keys.id_from(key)] = value
    return online, deactivated, capacities, heartbeats


async def compute_drift(ctx: Context) -> Drift:
    """Raises MirrorUnavailable when Valkey cannot be read (the caller answers 503)."""
    async with (
        ctx.db.connection() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        truth: Truth = await read_truth(conn)
    online, deactivated, capacities, heartbeats = await ctx.mirror.raw(
        "drift", lambda c: _read_valkey(ctx, c)
    )
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
    return drift
