"""The three sweeps, called directly with a chosen `now`: auto-offline, heartbeat
write-back, reseed. Each also run by two instances at the same moment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from halobestie.availability.drift import compute_drift
from halobestie.availability.sweeps import (
    run_auto_offline,
    run_heartbeat_writeback,
    run_reseed,
)
from halobestie.clock import ManualClock, iso
from tests.availability import insert_mitra, members, metric, valkey_target, valkey_url_via
from tests.conftest import AppFactory, Instance, Servers, eventually
from tests.factories import Person, make_user
from tests.support.proxy import FaultProxy

HEALED = "halobestie_mirror_drift_healed_total"


async def _online_mitra(inst: Instance) -> Person:
    mitra = await make_user(inst.ctx, "mitra")
    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    return mitra


async def _ping(inst: Instance, mitra: Person) -> None:
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
    assert r.status_code == 200, r.text


async def _online_ids(pg: asyncpg.Connection) -> set[str]:
    return {str(r[0]) for r in await pg.fetch("SELECT id FROM mitras WHERE is_online")}


@asynccontextmanager
async def update_statements_on_mitras(
    pg: asyncpg.Connection,
) -> AsyncIterator[Callable[[], Awaitable[list[int]]]]:
    """Log every UPDATE statement on mitras (one row per statement: rows it changed)."""
    await pg.execute("CREATE TABLE test_mitra_updates (n serial, rows int)")
    await pg.execute(
        "CREATE FUNCTION test_log_mitra_update() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO test_mitra_updates (rows) SELECT count(*) FROM changed;"
        " RETURN NULL; END $$"
    )
    await pg.execute(
        "CREATE TRIGGER test_mitra_updates AFTER UPDATE ON mitras"
        " REFERENCING NEW TABLE AS changed FOR EACH STATEMENT"
        " EXECUTE FUNCTION test_log_mitra_update()"
    )

    async def statements() -> list[int]:
        return [r[0] for r in await pg.fetch("SELECT rows FROM test_mitra_updates ORDER BY n")]

    try:
        yield statements
    finally:
        await pg.execute("DROP TRIGGER test_mitra_updates ON mitras")
        await pg.execute("DROP FUNCTION test_log_mitra_update()")
        await pg.execute("DROP TABLE test_mitra_updates")


async def test_auto_offline_takes_stale_and_silent_mitras_offline_everywhere(
    make_app: AppFactory, pg: asyncpg.Connection, valkey: Any
) -> None:
    silent = await insert_mitra(pg, online=True)  # online without any heartbeat
    async with make_app(HEARTBEAT_STALE_SECONDS=60) as inst:
        stale = await _online_mitra(inst)
        fresh = await _online_mitra(inst)
        rejoined = await _online_mitra(inst)
        inst.clock.advance(50)
        await _ping(inst, fresh)
        now = inst.clock.advance(20)
        # Stale in Valkey, fresh in Postgres (e.g. a ping recorded there during an
        # outage): Postgres re-checks and keeps this one online.
        await pg.execute("UPDATE mitras SET last_heartbeat_at = $2 WHERE id = $1", rejoined.id, now)

        result = await run_auto_offline(inst.ctx, now)

        assert result.ran and result.affected == 2
        assert await _online_ids(pg) == {str(fresh.id), str(rejoined.id)}
        assert await members(valkey, "mitras:online") == {str(fresh.id), str(rejoined.id)}
        for gone in (silent, str(stale.id)):
            assert await valkey.get(f"mitra:heartbeat:{gone}") is None


async def test_auto_offline_leaves_everyone_when_all_heartbeats_are_fresh(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    mitras = [await _online_mitra(inst) for _ in range(3)]
    inst.clock.advance(59)  # HEARTBEAT_STALE_SECONDS defaults to 60
    result = await run_auto_offline(inst.ctx, inst.clock.now())
    assert result.ran and result.affected == 0
    assert await _online_ids(pg) == {str(m.id) for m in mitras}


async def test_auto_offline_aborts_on_valkey_error_and_leaves_postgres_untouched(
    make_app: AppFactory, servers: Servers, pg: asyncpg.Connection
) -> None:
    async with FaultProxy(valkey_target(servers)) as proxy:
        async with make_app(VALKEY_URL=valkey_url_via(servers, proxy.port)) as inst:
            mitras = [await _online_mitra(inst) for _ in range(3)]
            now = inst.clock.advance(600)  # everyone stale, in Valkey and in Postgres
            await proxy.cut()

            first = await run_auto_offline(inst.ctx, now)  # finds out mid-sweep
            second = await run_auto_offline(inst.ctx, now)  # mirror already distrusted

            assert not first.ran and not second.ran
            assert await _online_ids(pg) == {str(m.id) for m in mitras}

            await proxy.restore()
            await eventually(lambda: inst.ctx.mirror.trusted)
            result = await run_auto_offline(inst.ctx, now)
            assert result.ran and result.affected == 3
            assert await _online_ids(pg) == set()


async def test_two_instances_running_auto_offline_at_once_offline_each_stale_mitra_once(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    clock = ManualClock()
    async with make_app(clock=clock) as one, make_app(clock=clock) as two:
        stale = [await _online_mitra(one) for _ in range(4)]
        clock.advance(45)
        fresh = [await _online_mitra(two) for _ in range(2)]
        now = clock.advance(30)

        results = await asyncio.gather(
            run_auto_offline(one.ctx, now), run_auto_offline(two.ctx, now)
        )

        assert sum(r.affected for r in results) == len(stale)
        assert await _online_ids(pg) == {str(m.id) for m in fresh}
        assert (await compute_drift(one.ctx)).count == 0


async def test_heartbeat_write_back_is_one_statement_and_never_moves_backwards(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    mitras = [await _online_mitra(inst) for _ in range(5)]
    pinged: dict[UUID, datetime] = {}
    for mitra in mitras:
        pinged[mitra.id] = inst.clock.advance(3)
        await _ping(inst, mitra)
    future = inst.clock.now() + timedelta(hours=1)
    ahead = mitras[0].id
    await pg.execute("UPDATE mitras SET last_heartbeat_at = $2 WHERE id = $1", ahead, future)

    async with update_statements_on_mitras(pg) as statements:
        result = await run_heartbeat_writeback(inst.ctx, inst.clock.now())
        assert await statements() == [4]  # one UPDATE for all of them
        assert result.ran and result.affected == 4

        again = await run_heartbeat_writeback(inst.ctx, inst.clock.now())
        assert again.affected == 0
        assert len(await statements()) <= 2

    stored = {r[0]: r[1] for r in await pg.fetch("SELECT id, last_heartbeat_at FROM mitras")}
    assert stored[ahead] == future  # Postgres ahead of Valkey stays ahead
    for mitra in mitras[1:]:
        assert stored[mitra.id] == pinged[mitra.id]


async def test_two_instances_writing_back_at_once_store_the_latest_heartbeats(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    clock = ManualClock()
    async with make_app(clock=clock) as one, make_app(clock=clock) as two:
        mitras = [await _online_mitra(one) for _ in range(6)]
        for n, mitra in enumerate(mitras):
            clock.advance(2)
            await _ping(one if n % 2 else two, mitra)
        now = clock.now()

        results = await asyncio.gather(
            run_heartbeat_writeback(one.ctx, now), run_heartbeat_writeback(two.ctx, now)
        )

        assert sum(r.affected for r in results) == len(mitras)
        for mitra in mitras:
            seen = await one.ctx.mirror.client.get(one.ctx.keys.heartbeat(mitra.id))
            stored = await pg.fetchval(
                "SELECT last_heartbeat_at FROM mitras WHERE id = $1", mitra.id
            )
            assert iso(stored) == seen


async def test_reseed_sweep_heals_injected_drift_and_counts_it(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    kept = await _online_mitra(inst)
    dropped = await _online_mitra(inst)
    await valkey.srem("mitras:online", str(dropped.id))
    await valkey.set(f"mitra:capacity:{kept.id}", "4")
    assert metric(inst.ctx, HEALED) == 0

    counts = await run_reseed(inst.ctx, inst.clock.now())

    assert counts is not None and counts.online == 2
    assert metric(inst.ctx, HEALED) == 2
    assert await members(valkey, "mitras:online") == {str(kept.id), str(dropped.id)}
    assert await valkey.get(f"mitra:capacity:{kept.id}") == "0"
    assert (await compute_drift(inst.ctx)).count == 0

    await run_reseed(inst.ctx, inst.clock.now())  # nothing to heal this time
    assert metric(inst.ctx, HEALED) == 2


async def test_two_instances_reseeding_at_once_end_in_sync(
    make_app: AppFactory, pg: asyncpg.Connection, valkey: Any
) -> None:
    started = datetime.now(UTC)
    ids = [await insert_mitra(pg, online=True, heartbeat=started) for _ in range(20)]
    async with make_app() as one, make_app(clock=one.clock) as two:
        await valkey.srem("mitras:online", *ids[:5])
        await pg.execute(
            "UPDATE mitras SET is_online = false WHERE id = ANY($1::uuid[])",
            [UUID(i) for i in ids[10:]],
        )

        counts = await asyncio.gather(
            run_reseed(one.ctx, one.clock.now()), run_reseed(two.ctx, two.clock.now())
        )

        assert [c.online if c else None for c in counts] == [10, 10]
        assert await members(valkey, "mitras:online") == set(ids[:10])
        assert (await compute_drift(two.ctx)).count == 0
        # 5 missing + 10 extra online members + 10 heartbeats of mitras now offline.
        assert metric(one.ctx, HEALED) + metric(two.ctx, HEALED) >= 25
