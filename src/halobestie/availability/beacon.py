"""The customer beacon: one shared snapshot per TTL across every instance.

Path, cheapest first:
1. GET the snapshot: one auto-pipelined command; nearly every poll ends here.
2. On a miss, the requests of this instance join one flight (`flight.py`): what follows
   happens once per instance, never once per request.
3. The flight tries `SET availability:snapshot:lock <token> NX PX <lease>`. The lease is
   sized to the computation (4x the last one measured here, 1 s at least, the TTL at
   most), not to the TTL, so a holder that dies holds nobody up for long. The winner
   computes from Valkey, stores the snapshot (TTL) and a longer-lived copy of it
   (`availability:snapshot:last`), and releases the lock only if it still holds it
   (compare-and-delete in the same script): a holder that outlived its lease never
   deletes the next holder's lock.
4. A loser answers with the last copy at once: stale, and marked so by its `computed_at`
   (at most about TTL + lease old). With no last copy (first run, Valkey restarted empty)
   it waits up to ~200 ms for the holder's snapshot, then computes one itself and stores
   it unless one was stored meanwhile: a dead holder costs one computation per instance.
With Valkey unusable, the answer comes from Postgres, cached in-process for the same TTL
so an outage does not turn every customer poll into an aggregate query.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta

from ..clock import iso
from ..context import Context, Slot
from ..errors import MirrorUnavailable
from .flight import BeaconLocal, BeaconState, Snapshot
from .queries import Pool, find_pool, pool_from_postgres

# How long a loser with no last copy waits for the holder's snapshot before computing.
WAIT_STEPS = 40
WAIT_STEP_SECONDS = 0.005
# The lock's lease: this many times the last computation, within [LEASE_MIN, TTL].
LEASE_PER_COMPUTATION = 4
LEASE_MIN_SECONDS = 1.0
FIRST_COMPUTATION_GUESS_SECONDS = 0.5  # before this instance has measured one
# The last copy outlives the snapshot, so a loser nearly always has one to serve.
LAST_COPY_TTLS = 6

# KEYS: snapshot, last copy, lock. ARGV: snapshot JSON, TTL ms, last copy TTL ms, token.
# Returns 1 when the lock was still ours and is released, 0 when it was not ours.
STORE_AND_RELEASE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
  return 1
end
return 0
"""
# KEYS: lock. ARGV: token. Compare-and-delete.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS: snapshot, last copy. ARGV: snapshot JSON, TTL ms, last copy TTL ms. A snapshot
# computed without the lock is kept only when nobody stored one meanwhile.
STORE_IF_ABSENT = """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"""


BEACON_LOCAL: Slot[BeaconLocal] = Slot("beacon", lambda _: BeaconLocal())


def beacon_local(ctx: Context) -> BeaconLocal:
    """This instance's side of the beacon (flight.py)."""
    return ctx.get(BEACON_LOCAL)


def snapshot_from(pool: Pool, now: datetime) -> Snapshot:
    available = len(pool.available)
    state: BeaconState
    if available:
        state = "available"
    elif pool.reachable:
        state = "busy"  # mitras online and alive, every one at capacity
    else:
        state = "offline"
    return {"state": state, "available_count": available, "computed_at": iso(now)}


async def get_beacon(ctx: Context, now: datetime) -> Snapshot:
    """{state, available_count, computed_at}; never raises for a Valkey failure (Postgres
    answers then), DatabaseUnavailable when both are down."""
    try:
        # Every customer polls this: the GET is auto-pipelined like the heartbeat (one
        # write for all the polls of a loop turn). Measured at 16.8k polls/s alone.
        raw = await ctx.mirror.read(
            "beacon", lambda c: ctx.mirror.batched.command("GET", ctx.keys.snapshot)
        )
        if raw is not None:
            return _parsed(raw)
        return await beacon_local(ctx).flight.run(lambda: _on_miss(ctx, now))
    except MirrorUnavailable:
        return await _beacon_from_postgres(ctx, now)


def lease_ms(ctx: Context) -> int:
    """The lock's lease in ms: sized to this instance's last computation, so a holder
    that dies delays the next fresh snapshot by about a computation, not a TTL."""
    measured = beacon_local(ctx).compute_seconds
    guess = FIRST_COMPUTATION_GUESS_SECONDS if measured is None else measured
    ttl = float(ctx.settings.availability_snapshot_ttl_seconds)
    return int(1000 * min(ttl, max(LEASE_MIN_SECONDS, LEASE_PER_COMPUTATION * guess)))


async def _on_miss(ctx: Context, now: datetime) -> Snapshot:
    """One per instance at a time (single flight): compute under the lock, or serve the
    last copy while another holds it."""
    keys = ctx.keys
    token = uuid.uuid4().hex
    won = await ctx.mirror.read(
        "beacon", lambda c: c.set(keys.snapshot_lock, token, nx=True, px=lease_ms(ctx))
    )
    if not won:
        return await _while_another_computes(ctx, now)
    released = False
    try:
        # The previous holder may have stored its snapshot and released the lock between
        # our GET and our SET NX: serve that one instead of computing again.
        raw = await ctx.mirror.read("beacon", lambda c: c.get(keys.snapshot))
        if raw is not None:
            return _parsed(raw)
        snapshot = await _compute(ctx, now, source="valkey")
        released = await ctx.mirror.write(
            "beacon_store",
            lambda c: c.eval(
                STORE_AND_RELEASE,
                3,
                keys.snapshot,
                keys.snapshot_last,
                keys.snapshot_lock,
                *_store_args(ctx, snapshot),
                token,
            ),
        )
        return snapshot
    finally:
        if not released:  # a snapshot found, or a failure: the lease need not run out
            await ctx.mirror.write(
                "beacon_unlock", lambda c: c.eval(RELEASE, 1, keys.snapshot_lock, token)
            )


async def _while_another_computes(ctx: Context, now: datetime) -> Snapshot:
    keys = ctx.keys
    raw = await ctx.mirror.read("beacon", lambda c: c.get(keys.snapshot_last))
    if raw is not None:
        return _parsed(raw)  # stale: its computed_at says by how much
    for _ in range(WAIT_STEPS):
        await asyncio.sleep(WAIT_STEP_SECONDS)
        raw = await ctx.mirror.read("beacon", lambda c: c.get(keys.snapshot))
        if raw is not None:
            return _parsed(raw)
    # The holder is slow or dead, and there is nothing older to serve: compute, once for
    # this instance (the flight), and share it unless the holder stored one meanwhile.
    snapshot = await _compute(ctx, now, source="valkey_unlocked")
    await ctx.mirror.write(
        "beacon_store",
        lambda c: c.eval(
            STORE_IF_ABSENT, 2, keys.snapshot, keys.snapshot_last, *_store_args(ctx, snapshot)
        ),
    )
    return snapshot


async def _compute(ctx: Context, now: datetime, *, source: str) -> Snapshot:
    started = time.monotonic()
    snapshot = snapshot_from(await find_pool(ctx, now, reader="beacon"), now)
    beacon_local(ctx).compute_seconds = time.monotonic() - started
    ctx.metrics.snapshot_computations.labels(source=source).inc()
    return snapshot


def _parsed(raw: str | bytes) -> Snapshot:
    """A snapshot as `_store_args` stored it."""
    snapshot: Snapshot = json.loads(raw)
    return snapshot


def _store_args(ctx: Context, snapshot: Snapshot) -> tuple[str, int, int]:
    ttl_ms = ctx.settings.availability_snapshot_ttl_seconds * 1000
    return json.dumps(snapshot), ttl_ms, ttl_ms * LAST_COPY_TTLS


async def _beacon_from_postgres(ctx: Context, now: datetime) -> Snapshot:
    ctx.metrics.fallback_reads.labels(reader="beacon").inc()
    local = beacon_local(ctx)
    cached = local.fallback
    if cached is not None and cached[0] > now:
        return cached[1]
    # Single flight: when the cache expires under load, one request runs the aggregate
    # and the others wait for its answer (measured without this: p99 1.7 s at 100k).
    async with local.fallback_lock:
        cached = local.fallback
        if cached is not None and cached[0] > now:
            return cached[1]
        pool = Pool(
            await pool_from_postgres(ctx, now),
            ctx.settings.mitra_max_concurrent_sessions,
            "postgres",
        )
        snapshot = snapshot_from(pool, now)
        ctx.metrics.snapshot_computations.labels(source="postgres").inc()
        ttl = timedelta(seconds=ctx.settings.availability_snapshot_ttl_seconds)
        local.fallback = (now + ttl, snapshot)
        return snapshot
