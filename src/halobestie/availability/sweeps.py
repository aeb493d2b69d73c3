"""The three sweeps. Each takes `now` so tests drive them; `SweepRunner` runs them on the
configured cadences. Each is correct when two instances run it at the same moment:
auto-offline and write-back are idempotent and additionally take a try-lock so the
second instance skips instead of repeating the work; the reseed is serialised by the
seed lock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ..aftercommit import run_after_commit
from ..clock import parse_iso
from ..context import Context
from ..errors import MirrorUnavailable, ServiceUnavailable
from ..events.retention import cadence as event_retention_cadence
from ..events.retention import run_event_retention
from ..logs import get_logger
from ..valkey.mirror import Client
from . import locks
from .queries import stale_cutoff
from .seed import SeedCounts, seed_mirror
from .sync import mirror_mitras

log = get_logger(__name__)


@dataclass(frozen=True)
class SweepResult:
    ran: bool
    affected: int = 0
    reason: str = ""


async def _online_heartbeats(ctx: Context, client: Client) -> dict[str, str | None]:
    keys = ctx.keys
    ids = sorted(await client.smembers(keys.online))
    values: list[str | None] = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        values.extend(await client.mget([keys.heartbeat(i) for i in chunk]))
    return dict(zip(ids, values, strict=True))


async def _with_try_lock(
    ctx: Context, lock: int, work: Callable[[Any], Awaitable[int]]
) -> SweepResult:
    """`work(conn)` in one transaction that holds the sweep's try-lock, so an instance
    running the sweep at the same moment skips it. Transaction-level, taken and released
    with the work's own statements: safe through a pooler in transaction mode (locks.py),
    and nothing to unlock when the connection dies."""
    async with ctx.db.transaction() as conn:
        got = await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock($1::int, $2::int)", locks.NAMESPACE, lock
        )
        if not got:
            return SweepResult(False, reason="another instance is running this sweep")
        return SweepResult(True, await work(conn))


OFFLINE_SQL = """
UPDATE mitras SET is_online = false, status_changed_at = $3
WHERE id = ANY($1::uuid[]) AND is_online
  AND (last_heartbeat_at IS NULL OR last_heartbeat_at <= $2)
RETURNING id
"""


async def run_auto_offline(ctx: Context, now: datetime) -> SweepResult:
    """Online mitras whose Valkey heartbeat is missing or stale go offline, Postgres
    first. Any Valkey trouble aborts the whole sweep: a Postgres scan during a Valkey
    hiccup would see stale `last_heartbeat_at` values and mass-offline live mitras."""
    if not ctx.mirror.trusted:
        return SweepResult(False, reason="mirror not trusted")
    try:
        heartbeats = await ctx.mirror.read("auto_offline", lambda c: _online_heartbeats(ctx, c))
    except MirrorUnavailable:
        return SweepResult(False, reason="valkey error")
    cutoff = stale_cutoff(ctx, now)
    stale = [
        UUID(mitra_id)
        for mitra_id, seen in heartbeats.items()
        if seen is None or parse_iso(seen) <= cutoff
    ]
    if not stale:
        return SweepResult(True, 0)

    offlined: list[UUID] = []

    async def work(conn: Any) -> int:
        # The Postgres condition re-checks staleness: a mitra who went online again
        # since our Valkey read has a fresh last_heartbeat_at and is left alone.
        rows = await conn.fetch(OFFLINE_SQL, stale, cutoff, now)
        offlined.extend(r["id"] for r in rows)
        return len(rows)

    result = await _with_try_lock(ctx, locks.AUTO_OFFLINE, work)
    if offlined:  # committed: mirror them (after the commit, outside the try-lock)
        await run_after_commit(ctx, [mirror_mitras(ctx, offlined)])
        log.info("auto_offline", count=len(offlined))
    return result


WRITEBACK_SQL = """
UPDATE mitras AS m SET last_heartbeat_at = v.seen
FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, seen)
WHERE m.id = v.id AND (m.last_heartbeat_at IS NULL OR m.last_heartbeat_at < v.seen)
"""


async def run_heartbeat_writeback(ctx: Context, now: datetime) -> SweepResult:
    """Valkey heartbeats into `mitras.last_heartbeat_at`: one statement per cycle,
    never moving a timestamp backwards, so two instances doing it at once are harmless."""
    try:
        heartbeats = await ctx.mirror.read("writeback", lambda c: _online_heartbeats(ctx, c))
    except MirrorUnavailable:
        return SweepResult(False, reason="valkey error")
    pairs = [(UUID(i), parse_iso(t)) for i, t in heartbeats.items() if t is not None]
    if not pairs:
        return SweepResult(True, 0)

    async def work(conn: Any) -> int:
        status = await conn.execute(WRITEBACK_SQL, [p[0] for p in pairs], [p[1] for p in pairs])
        return int(status.split()[-1])

    return await _with_try_lock(ctx, locks.HEARTBEAT_WRITEBACK, work)


async def run_reseed(ctx: Context, now: datetime) -> SeedCounts | None:
    """Full reseed; counts the drift it healed. None when Valkey is unreachable."""
    try:
        counts = await seed_mirror(ctx, "sweep", measure_drift=True)
    except MirrorUnavailable:
        return None
    drift = counts.drift
    # Measured under the seed lock: a second instance reseeding right after finds none.
    if drift is not None and drift.count:
        ctx.metrics.drift_found.inc(drift.count)
        ctx.metrics.drift_healed.inc(drift.count)
        log.warning("mirror_drift_healed", healed=drift.count, **drift.as_dict())
    return counts


class SweepRunner:
    """Runs each sweep on its cadence until stopped. A failing run is logged, timed and
    retried next cadence; Postgres being down is expected and not an error."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._tasks: list[asyncio.Task[None]] = []
        # Set by stop() before cancelling: on 3.11 a cancel can be swallowed by an
        # asyncio.wait_for inside asyncpg mid-sweep, and the loop would sleep on forever.
        self._stopped = asyncio.Event()

    def start(self) -> None:
        self._stopped.clear()
        s = self.ctx.settings
        for name, every, sweep in (
            ("auto_offline", s.mitra_auto_offline_sweep_seconds, run_auto_offline),
            ("heartbeat_writeback", s.heartbeat_mirror_interval_seconds, run_heartbeat_writeback),
            ("reseed", s.valkey_online_mirror_sweep_seconds, run_reseed),
            ("event_retention", event_retention_cadence(s), run_event_retention),
        ):
            self._tasks.append(asyncio.create_task(self._loop(name, every, sweep), name=name))

    async def stop(self) -> None:
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _loop(
        self, name: str, every: float, sweep: Callable[[Context, datetime], Awaitable[object]]
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(every):
                    await self._stopped.wait()
                return
            except TimeoutError:
                pass
            started = time.perf_counter()
            try:
                await sweep(self.ctx, self.ctx.clock.now())
            except ServiceUnavailable as exc:  # Postgres down, or busy past its bounds
                log.warning("sweep_skipped_postgres_down", sweep=name, error=exc.code)
            except Exception:
                log.exception("sweep_failed", sweep=name)
            finally:
                self.ctx.metrics.sweep_duration.labels(sweep=name).observe(
                    time.perf_counter() - started
                )
