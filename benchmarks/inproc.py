"""In-process scenarios: the engine's own functions called directly with a real Context
(real Postgres, real Valkey), timed with perf_counter. Used for what HTTP would only
blur: find-available, the beacon's three paths, the sweeps, the seed, Valkey memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from halobestie.availability import beacon as beacon_mod
from halobestie.availability.queries import Pool, find_pool, pool_from_postgres
from halobestie.availability.seed import seed_mirror
from halobestie.availability.sweeps import (
    run_auto_offline,
    run_heartbeat_writeback,
    run_reseed,
)
from halobestie.availability.sync import sync_mitras
from halobestie.clock import iso
from halobestie.config import load_settings
from halobestie.context import Context
from halobestie.logs import configure_logging
from halobestie.runtime import Runtime

from .infra import BENCH_JWT_SECRET, BENCH_WEBHOOK_SECRET, STALE_SECONDS, with_query


class Harness:
    """An engine context without the serving parts (no sweeps, timers or watcher)."""

    def __init__(self, database_url: str, valkey_url: str, app_name: str) -> None:
        dsn = (
            database_url
            if "application_name=" in database_url
            else with_query(database_url, application_name=app_name)
        )
        settings = load_settings(
            HALOBESTIE_ENV="production",
            DATABASE_URL=dsn,
            VALKEY_URL=valkey_url,
            JWT_SECRET=BENCH_JWT_SECRET,
            PAYMENT_WEBHOOK_SECRET=BENCH_WEBHOOK_SECRET,
            SWEEPS_ENABLED=False,
            TIMERS_ENABLED=False,
            HEARTBEAT_STALE_SECONDS=STALE_SECONDS,
            LOG_LEVEL="WARNING",
            # The 100k seed and sweeps move large batches: not the request timeout.
            VALKEY_OPERATION_TIMEOUT_SECONDS=10,
            DATABASE_TIMEOUT_SECONDS=120,
        )
        configure_logging(settings.log_level)
        self.runtime = Runtime(settings)
        self.ctx: Context = self.runtime.ctx

    async def open(self) -> None:
        ctx = self.ctx
        await ctx.db.open()
        ctx.mirror.set_seeder(lambda reason: seed_mirror(ctx, reason))
        if not await ctx.mirror.ensure_seeded("bench"):
            raise RuntimeError("the benchmark harness could not seed the mirror")

    async def close(self) -> None:
        await self.ctx.mirror.close()
        await self.ctx.db.close()


def now() -> datetime:
    return datetime.now(UTC)


def summary(ms: list[float]) -> dict[str, Any]:
    ordered = sorted(ms)
    return {
        "n": len(ms),
        "median_ms": statistics.median(ordered),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "p90_ms": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
        "samples_ms": [round(v, 3) for v in ms],
    }


async def timed(
    fn: Callable[[], Awaitable[Any]], setup: Callable[[], Awaitable[Any]] | None = None
) -> tuple[float, Any]:
    if setup is not None:
        await setup()
    started = time.perf_counter()
    result = await fn()
    return (time.perf_counter() - started) * 1000, result


# -- find available ------------------------------------------------------------------


async def find_available(h: Harness, iterations: int) -> dict[str, Any]:
    """Valkey path against the Postgres fallback query, interleaved; both must agree."""
    ctx = h.ctx
    max_sessions = ctx.settings.mitra_max_concurrent_sessions
    valkey_ms: list[float] = []
    pg_ms: list[float] = []
    counts: set[tuple[int, int]] = set()
    same_answer = True

    async def from_valkey() -> dict[str, int]:
        pool = await find_pool(ctx, now())
        if pool.source != "valkey":
            raise RuntimeError("find_pool fell back to Postgres during the Valkey measurement")
        return pool.available

    async def from_postgres() -> dict[str, int]:
        return Pool(await pool_from_postgres(ctx, now()), max_sessions, "postgres").available

    await from_valkey()
    await from_postgres()
    client_cpu: list[float] = []
    await ctx.mirror.client.config_resetstat()
    for _ in range(iterations):
        cpu = time.process_time()
        ms, v = await timed(from_valkey)
        client_cpu.append((time.process_time() - cpu) * 1000)
        valkey_ms.append(ms)
        ms, p = await timed(from_postgres)
        pg_ms.append(ms)
        counts.add((len(v), len(p)))
        same_answer = same_answer and v == p
    stats = await ctx.mirror.client.info("commandstats")
    server_us = sum(
        v["usec"] for k, v in stats.items() if k.startswith("cmdstat_") and k != "cmdstat_config"
    )
    agree = same_answer and all(a == b for a, b in counts)
    # The same calls back to back, for contrast: interleaved, each path runs right after
    # the other has filled the caches with 10k rows of its own (measured ~1-2 ms dearer).
    alone: dict[str, list[float]] = {"valkey": [], "postgres": []}
    for name, fn in (("valkey", from_valkey), ("postgres", from_postgres)):
        for _ in range(iterations):
            alone[name].append((await timed(fn))[0])
    return {
        "valkey_back_to_back": summary(alone["valkey"]),
        "postgres_back_to_back": summary(alone["postgres"]),
        "valkey": summary(valkey_ms),
        "valkey_client_cpu_ms": statistics.median(client_cpu),
        "valkey_server_ms": server_us / iterations / 1000,
        "valkey_server_commands": {
            k.removeprefix("cmdstat_"): v["calls"] // iterations
            for k, v in stats.items()
            if k.startswith("cmdstat_") and k != "cmdstat_config"
        },
        "postgres": summary(pg_ms),
        "available": sorted(counts)[0][0],
        "paths_agree": agree,
    }


# -- beacon --------------------------------------------------------------------------


async def beacon_paths(h: Harness, iterations: int) -> dict[str, Any]:
    ctx = h.ctx
    keys = ctx.keys

    async def drop_snapshot() -> None:
        await ctx.mirror.client.delete(keys.snapshot, keys.snapshot_lock)

    async def drop_fallback_cache() -> None:
        if hasattr(beacon_mod, "beacon_local"):
            beacon_mod.beacon_local(ctx).fallback = None
        else:  # a tree before issue 10's restructure (ab.py) kept it on the Context
            ctx.fallback_beacon = None  # type: ignore[attr-defined]

    async def computed() -> Any:
        return await beacon_mod.get_beacon(ctx, now())

    async def fallback() -> Any:
        return await beacon_mod._beacon_from_postgres(ctx, now())

    cached_ms, valkey_ms, pg_ms = [], [], []
    answers = set()
    for _ in range(iterations):
        ms, snap = await timed(computed, drop_snapshot)
        valkey_ms.append(ms)
        ms, _ = await timed(computed)  # the snapshot just stored
        cached_ms.append(ms)
        ms, fb = await timed(fallback, drop_fallback_cache)
        pg_ms.append(ms)
        answers.add((snap["state"], snap["available_count"], fb["state"], fb["available_count"]))
    return {
        "cached": summary(cached_ms),
        "valkey": summary(valkey_ms),
        "postgres": summary(pg_ms),
        "answers": [list(a) for a in sorted(answers)],
    }


# -- memory --------------------------------------------------------------------------


async def valkey_memory(h: Harness) -> dict[str, Any]:
    client: Any = h.ctx.mirror.client
    keys = h.ctx.keys
    info = await client.info("memory")
    online = await client.scard(keys.online)
    sample = await client.srandmember(keys.online)
    out: dict[str, Any] = {
        "used_memory": int(info["used_memory"]),
        "online": int(online),
        "dbsize": int(await client.dbsize()),
    }
    if sample:
        out["heartbeat_key_bytes"] = await client.memory_usage(keys.heartbeat(sample))
        out["capacity_key_bytes"] = await client.memory_usage(keys.capacity(sample))
        out["online_set_bytes"] = await client.memory_usage(keys.online, samples=0)
        out["online_set_bytes_per_member"] = out["online_set_bytes"] / max(1, int(online))
        out["heartbeat_value_example"] = await client.get(keys.heartbeat(sample))
    return out


# -- sweeps --------------------------------------------------------------------------


async def online_ids(h: Harness) -> list[str]:
    client: Any = h.ctx.mirror.client
    return sorted(await client.smembers(h.ctx.keys.online))


async def make_stale(h: Harness, ids: list[str], when: datetime) -> None:
    """These mitras' heartbeats go old, in Valkey and in Postgres alike."""
    ctx = h.ctx
    await ctx.mirror.client.mset({ctx.keys.heartbeat(i): iso(when) for i in ids})
    async with ctx.db.connection() as conn:
        await conn.execute(
            "UPDATE mitras SET last_heartbeat_at = $2 WHERE id = ANY($1::uuid[])",
            [UUID(i) for i in ids],
            when,
        )


async def bring_back_online(h: Harness, ids: list[str], when: datetime) -> None:
    ctx = h.ctx
    uuids = [UUID(i) for i in ids]
    async with ctx.db.connection() as conn:
        await conn.execute(
            "UPDATE mitras SET is_online = true, last_heartbeat_at = $2 WHERE id = ANY($1::uuid[])",
            uuids,
            when,
        )
    for start in range(0, len(uuids), 1000):
        await sync_mitras(ctx, uuids[start : start + 1000])


async def touch_all_heartbeats(h: Harness, ids: list[str], when: datetime) -> None:
    """Every online mitra pinged since the last write-back (its worst case)."""
    ctx = h.ctx
    stamp = iso(when)
    async with ctx.mirror.client.pipeline(transaction=False) as pipe:
        for start in range(0, len(ids), 5000):
            pipe.mset({ctx.keys.heartbeat(i): stamp for i in ids[start : start + 5000]})
        await pipe.execute()


async def sweeps(h: Harness, iterations: int, stale_share: float) -> dict[str, Any]:
    ids = await online_ids(h)
    stale_n = max(1, round(len(ids) * stale_share))
    # Not the busy ones: an offline mitra with an open session is a different story.
    async with h.ctx.db.connection() as conn:
        busy = {
            str(r[0])
            for r in await conn.fetch(
                "SELECT DISTINCT mitra_id FROM chat_sessions"
                " WHERE status IN ('active', 'pending_payment')"
            )
        }
    candidates = [i for i in ids if i not in busy]
    out: dict[str, Any] = {"online": len(ids), "stale_per_trial": stale_n}

    steady, stale, writeback, reseed = [], [], [], []
    offlined, written = [], []
    for trial in range(iterations):
        ms, res = await timed(lambda: run_auto_offline(h.ctx, now()))
        if not res.ran or res.affected:
            raise RuntimeError(f"steady auto-offline did not run cleanly: {res}")
        steady.append(ms)

        chosen = candidates[trial * stale_n : (trial + 1) * stale_n]
        await make_stale(h, chosen, now() - timedelta(hours=2))
        ms, res = await timed(lambda: run_auto_offline(h.ctx, now()))
        stale.append(ms)
        offlined.append(res.affected)
        await bring_back_online(h, chosen, now())

        await touch_all_heartbeats(h, ids, now())
        ms, res = await timed(lambda: run_heartbeat_writeback(h.ctx, now()))
        writeback.append(ms)
        written.append(res.affected)

        if trial < max(1, iterations // 2):
            ms, _ = await timed(lambda: run_reseed(h.ctx, now()))
            reseed.append(ms)
    out.update(
        {
            "auto_offline_steady": summary(steady),
            "auto_offline_stale": summary(stale),
            "auto_offline_offlined": offlined,
            "writeback": summary(writeback),
            "writeback_rows": written,
            "reseed": summary(reseed),
        }
    )
    return out
