"""The after-commit rule (aftercommit.py): an effect that fails after a committed write
never turns the write into a 5xx; it is counted, and the reseed heals what it missed.

The effect made to fail here is the mirror's write-through: it takes the seed advisory
lock shared, so a holder of that lock exclusive makes it wait until Postgres' lock_timeout
(DATABASE_LOCK_TIMEOUT_SECONDS) answers LockTimeout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from halobestie.availability import locks
from halobestie.availability.seed import seed_mirror
from tests.conftest import Instance
from tests.factories import make_user
from tests.failures.helpers import metric_sum
from tests.sessions.helpers import make_pending_session, pay

FAILURES = "halobestie_after_commit_failures_total"


@asynccontextmanager
async def seed_lock_held(pg: asyncpg.Connection) -> AsyncIterator[None]:
    await pg.execute("SELECT pg_advisory_lock($1::int, $2::int)", locks.NAMESPACE, locks.SEED)
    try:
        yield
    finally:
        await pg.execute("SELECT pg_advisory_unlock($1::int, $2::int)", locks.NAMESPACE, locks.SEED)


async def test_going_online_answers_200_when_its_mirror_write_times_out(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    before = await metric_sum(inst, FAILURES, effect="mirror_mitras")

    async with seed_lock_held(pg):
        r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)

    assert r.status_code == 200 and r.json() == {"is_online": True}, r.text
    assert await pg.fetchval("SELECT is_online FROM mitras WHERE id = $1", mitra.id)
    assert await metric_sum(inst, FAILURES, effect="mirror_mitras") == before + 1
    # The mirror missed it; the reseed (sweep, or after a reconnect) heals it.
    assert not await valkey.sismember(inst.ctx.keys.online, str(mitra.id))
    await seed_mirror(inst.ctx, "test")
    assert await valkey.sismember(inst.ctx.keys.online, str(mitra.id))


async def test_ending_a_session_answers_200_when_its_capacity_write_times_out(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    customer, mitra = await make_user(inst.ctx, "customer"), await make_user(inst.ctx, "mitra")
    session_id = await make_pending_session(inst, customer, mitra)
    assert (await pay(inst, session_id))["status"] == "active"
    assert await valkey.get(inst.ctx.keys.capacity(mitra.id)) == "1"
    before = await metric_sum(inst, FAILURES, effect="session_changed")

    async with seed_lock_held(pg):
        r = await inst.client.post(f"/api/sessions/{session_id}/end", headers=customer.headers)

    assert r.status_code == 200 and r.json()["session"]["status"] == "ended", r.text
    status = await pg.fetchval("SELECT status FROM chat_sessions WHERE id = $1", session_id)
    assert status == "ended"
    assert await metric_sum(inst, FAILURES, effect="session_changed") == before + 1
    assert await valkey.get(inst.ctx.keys.capacity(mitra.id)) == "1"  # missed
    await seed_mirror(inst.ctx, "test")
    assert await valkey.get(inst.ctx.keys.capacity(mitra.id)) in (None, "0")
