"""Seeding the mirror from Postgres: at startup, on demand, under a key prefix, atomically."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from halobestie.availability.scripts import scripts
from halobestie.availability.seed import seed_mirror
from halobestie.clock import iso
from tests.availability import insert_customer, insert_mitra, insert_session, members
from tests.conftest import AppFactory
from tests.factories import make_user


async def test_startup_seeds_every_key_from_rows_written_before_the_app_started(
    pg: asyncpg.Connection, valkey: Any, make_app: AppFactory
) -> None:
    seen = datetime.now(UTC) - timedelta(seconds=5)
    busy = await insert_mitra(pg, online=True, heartbeat=seen)
    idle = await insert_mitra(pg, online=True)  # online but never pinged
    resting = await insert_mitra(pg, heartbeat=seen)  # offline, pinged long ago
    banned = await insert_mitra(pg, active=False, heartbeat=seen)
    customer = await insert_customer(pg)
    for status in ("active", "pending_payment", "ended", "cancelled", "expired", "rerouted"):
        await insert_session(pg, customer, busy, status)

    async with make_app():
        assert await members(valkey, "mitras:online") == {busy, idle}
        assert await members(valkey, "mitras:deactivated") == {banned}
        assert await valkey.get(f"mitra:capacity:{busy}") == "2"  # active + pending_payment
        assert await valkey.get(f"mitra:capacity:{idle}") == "0"
        assert await valkey.get(f"mitra:heartbeat:{busy}") == iso(seen)
        # A heartbeat only where last_heartbeat_at is set, and only for online mitras.
        for mitra in (idle, resting, banned):
            assert await valkey.get(f"mitra:heartbeat:{mitra}") is None
        for mitra in (resting, banned):
            assert await valkey.get(f"mitra:capacity:{mitra}") is None
        mirror_keys = {k for k in await valkey.keys("*") if not k.startswith("availability:")}
        # Only `idle` may be offered: `busy` is at capacity (two open sessions, limit 1).
        assert await valkey.zrange("mitras:ranked", 0, -1, withscores=True) == [(idle, 0.0)]
        assert mirror_keys == {
            "mitras:online",
            "mitras:deactivated",
            "mitras:ranked",
            f"mitra:capacity:{busy}",
            f"mitra:capacity:{idle}",
            f"mitra:heartbeat:{busy}",
        }


async def test_startup_seed_writes_capacity_of_offline_mitra_with_open_sessions(
    pg: asyncpg.Connection, valkey: Any, make_app: AppFactory
) -> None:
    offline_busy = await insert_mitra(pg)
    customer = await insert_customer(pg)
    await insert_session(pg, customer, offline_busy, "active")
    async with make_app():
        assert await valkey.get(f"mitra:capacity:{offline_busy}") == "1"
        assert await members(valkey, "mitras:online") == set()


async def test_reseed_replaces_sets_keeps_newer_heartbeats_and_drops_unbacked_keys(
    pg: asyncpg.Connection, valkey: Any, make_app: AppFactory
) -> None:
    t0 = datetime.now(UTC) - timedelta(seconds=10)
    ahead = await insert_mitra(pg, online=True, heartbeat=t0)
    behind = await insert_mitra(pg, online=True, heartbeat=t0)
    offline = await insert_mitra(pg, heartbeat=t0)
    banned = await insert_mitra(pg, active=False)
    customer = await insert_customer(pg)
    await insert_session(pg, customer, ahead, "active")
    ghost = str(uuid.uuid4())

    async with make_app() as inst:
        admin = await make_user(inst.ctx, "admin")
        await valkey.srem("mitras:online", behind)
        await valkey.sadd("mitras:online", offline, ghost)
        await valkey.srem("mitras:deactivated", banned)
        await valkey.sadd("mitras:deactivated", ahead)
        await valkey.set(f"mitra:heartbeat:{ahead}", iso(t0 + timedelta(seconds=30)))
        await valkey.set(f"mitra:heartbeat:{behind}", iso(t0 - timedelta(seconds=30)))
        await valkey.set(f"mitra:heartbeat:{offline}", iso(t0))
        await valkey.set(f"mitra:heartbeat:{ghost}", iso(t0))
        await valkey.set(f"mitra:capacity:{ahead}", "5")
        await valkey.delete(f"mitra:capacity:{behind}")
        await valkey.set(f"mitra:capacity:{offline}", "3")
        await valkey.set(f"mitra:capacity:{ghost}", "1")

        r = await inst.client.post("/api/admin/availability/reseed", headers=admin.headers)

        assert r.status_code == 200, r.text
        assert r.json() == {
            "online": 2,
            "deactivated": 1,
            "capacities": 2,
            "heartbeats": 2,
            "ranked": 1,
        }
        assert await members(valkey, "mitras:online") == {ahead, behind}
        assert await members(valkey, "mitras:deactivated") == {banned}
        # Valkey's newer ping survives; a heartbeat behind Postgres is brought forward.
        assert await valkey.get(f"mitra:heartbeat:{ahead}") == iso(t0 + timedelta(seconds=30))
        assert await valkey.get(f"mitra:heartbeat:{behind}") == iso(t0)
        for gone in (offline, ghost):
            assert await valkey.get(f"mitra:heartbeat:{gone}") is None
            assert await valkey.get(f"mitra:capacity:{gone}") is None
        assert await valkey.get(f"mitra:capacity:{ahead}") == "1"
        assert await valkey.get(f"mitra:capacity:{behind}") == "0"
        assert await valkey.keys("mitras:seed-tmp:*") == []


async def test_reseed_removes_sets_that_postgres_no_longer_backs(
    pg: asyncpg.Connection, valkey: Any, make_app: AppFactory
) -> None:
    online = await insert_mitra(pg, online=True, heartbeat=datetime.now(UTC))
    banned = await insert_mitra(pg, active=False)
    async with make_app() as inst:
        admin = await make_user(inst.ctx, "admin")
        assert await valkey.scard("mitras:online") == 1
        await pg.execute("UPDATE mitras SET is_online = false, is_active = true")

        r = await inst.client.post("/api/admin/availability/reseed", headers=admin.headers)

        assert r.json() == {
            "online": 0,
            "deactivated": 0,
            "capacities": 0,
            "heartbeats": 0,
            "ranked": 0,
        }
        assert not await valkey.exists("mitras:online", "mitras:deactivated")
        assert await valkey.get(f"mitra:heartbeat:{online}") is None
        assert await valkey.get(f"mitra:capacity:{online}") is None
        assert await valkey.sismember("mitras:deactivated", banned) == 0


async def test_reseed_is_admin_only(make_app: AppFactory) -> None:
    async with make_app() as inst:
        mitra = await make_user(inst.ctx, "mitra")
        r = await inst.client.post("/api/admin/availability/reseed", headers=mitra.headers)
        assert r.status_code == 403
        assert r.json()["error"] == "forbidden"


async def test_key_prefix_puts_every_key_the_engine_writes_under_it(
    pg: asyncpg.Connection, valkey: Any, make_app: AppFactory
) -> None:
    prefix = "tenant-a:"
    seeded = await insert_mitra(pg, online=True, heartbeat=datetime.now(UTC))
    banned = await insert_mitra(pg, active=False)
    async with make_app(VALKEY_KEY_PREFIX=prefix) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        assert (
            await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
        ).is_success
        r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
        assert r.status_code == 200, r.text
        assert (await inst.client.get("/api/availability")).json()["available_count"] == 2

        keys = await valkey.keys("*")
        assert keys and all(k.startswith(prefix) for k in keys), keys
        assert await members(valkey, f"{prefix}mitras:online") == {seeded, str(mitra.id)}
        assert await members(valkey, f"{prefix}mitras:deactivated") == {banned}
        assert await valkey.get(f"{prefix}mitra:capacity:{mitra.id}") == "0"
        assert await valkey.get(f"{prefix}mitra:heartbeat:{mitra.id}") == iso(inst.clock.now())
        assert await valkey.exists(f"{prefix}availability:snapshot") == 1


BULK_MITRAS_SQL = """
WITH u AS (
    INSERT INTO users (email, password_hash, display_name, role)
    SELECT 'bulk-' || g || '@example.com', 'x', 'Bulk ' || g, 'mitra'
    FROM generate_series(1, $1::int) AS g
    RETURNING id
)
INSERT INTO mitras (id, is_online, last_heartbeat_at) SELECT id, false, now() FROM u
"""


async def _watch_sizes(valkey: Any, done: asyncio.Event) -> list[tuple[int, int]]:
    """SCARD both sets in one round trip, as often as possible, until `done`."""
    seen: list[tuple[int, int]] = []
    while not done.is_set():
        async with valkey.pipeline(transaction=False) as pipe:
            pipe.scard("mitras:online")
            pipe.scard("mitras:deactivated")
            online, deactivated = await pipe.execute()
        seen.append((online, deactivated))
    return seen


async def _seed_while_watching(ctx: Any, valkey: Any) -> set[tuple[int, int]]:
    done = asyncio.Event()
    watcher = asyncio.create_task(_watch_sizes(valkey, done))
    await asyncio.sleep(0.01)  # the watcher is reading before the seed starts
    try:
        await seed_mirror(ctx, "manual")
    finally:
        await asyncio.sleep(0.01)
        done.set()
    return set(await watcher)


async def test_readers_see_only_the_old_or_the_new_set_while_5000_mitras_are_seeded(
    pg: asyncpg.Connection, valkey: Any, make_app: AppFactory
) -> None:
    await pg.execute(BULK_MITRAS_SQL, 5000)
    await pg.execute(
        "UPDATE mitras SET is_online = true WHERE id IN (SELECT id FROM mitras LIMIT 1000)"
    )
    async with make_app() as inst:
        assert await valkey.scard("mitras:online") == 1000
        await pg.execute("UPDATE mitras SET is_online = true")
        await pg.execute(
            "UPDATE mitras SET is_active = false WHERE id IN (SELECT id FROM mitras LIMIT 3000)"
        )

        grown = await _seed_while_watching(inst.ctx, valkey)

        assert grown <= {(1000, 0), (5000, 3000)}, grown
        assert await valkey.scard("mitras:online") == 5000
        assert await valkey.scard("mitras:deactivated") == 3000

        await pg.execute(
            "UPDATE mitras SET is_online = false, is_active = true"
            " WHERE id IN (SELECT id FROM mitras ORDER BY id LIMIT 4000)"
        )
        expected_deactivated = await pg.fetchval("SELECT count(*) FROM mitras WHERE NOT is_active")

        shrunk = await _seed_while_watching(inst.ctx, valkey)

        assert shrunk <= {(5000, 3000), (1000, expected_deactivated)}, shrunk
        assert await valkey.scard("mitras:online") == 1000
        assert await valkey.scard("mitras:deactivated") == expected_deactivated
        assert await valkey.keys("mitras:seed-tmp:*") == []


async def test_a_seed_loads_the_lua_scripts_into_a_server_that_lost_them(
    valkey: Any, make_app: AppFactory
) -> None:
    """A restarted Valkey has an empty script cache; the seed that follows every restart
    loads the scripts, so the first heartbeats do not all come back NOSCRIPT."""
    async with make_app() as inst:
        lua = scripts(inst.ctx)
        shas = [s.sha for s in (lua.heartbeat, lua.apply_mitra, lua.merge_heartbeats)]
        await valkey.script_flush()
        assert await valkey.script_exists(*shas) == [False, False, False]

        await seed_mirror(inst.ctx, "test")

        assert await valkey.script_exists(*shas) == [True, True, True]
