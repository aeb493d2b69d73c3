"""Valkey goes away under a running app: every read falls back to Postgres and gives the
answer Valkey gave just before; writes still succeed; the breaker keeps an outage from
costing a timeout per request; the mirror comes back by itself, re-seeded and in sync."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from halobestie.availability.beacon import beacon_local
from halobestie.availability.queries import find_pool
from halobestie.availability.sweeps import run_heartbeat_writeback
from halobestie.availability.sync import sync_mitras
from tests.conftest import Instance, eventually
from tests.factories import Person, make_chat_session, make_user
from tests.support.proxy import FaultProxy

from . import helpers
from .helpers import (
    availability_of,
    beacon,
    dashboard,
    fallback_reads,
    heartbeat,
    metric_sum,
    online_mitra,
    record_statuses,
    state_of,
    valkey_errors,
)

# The shared fixtures (requested by their short names).
valkey_fault_app_fixture = helpers.valkey_fault_app_fixture
valkey_proxy_fixture = helpers.valkey_proxy_fixture


@dataclass
class Cast:
    admin: Person
    customer: Person
    reachable: Person  # online, fresh heartbeat, no session
    busy: Person  # online, fresh heartbeat, at capacity (MITRA_MAX_CONCURRENT_SESSIONS=1)
    stale: Person  # online, but its last heartbeat is older than HEARTBEAT_STALE_SECONDS
    deactivated: Person  # went online, then an admin deactivated it

    @property
    def mitras(self) -> list[Person]:
        return [self.reachable, self.busy, self.stale, self.deactivated]


async def build_cast(inst: Instance) -> Cast:
    """Everyone goes online at t0; at t0+50 s two of them ping (Valkey only); it is now
    t0+100 s, so only the Valkey heartbeats (or their write-back) keep those two fresh."""
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    reachable, busy, stale, deactivated = [await online_mitra(inst) for _ in range(4)]
    await make_chat_session(inst.ctx, customer, busy, "active")
    assert await sync_mitras(inst.ctx, [busy.id])  # what a session transition does
    r = await inst.client.patch(
        f"/api/admin/mitras/{deactivated.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    inst.clock.advance(50)
    for mitra in (reachable, busy):
        assert (await heartbeat(inst, mitra)).status_code == 200
    inst.clock.advance(50)
    return Cast(admin, customer, reachable, busy, stale, deactivated)


async def all_answers(inst: Instance, cast: Cast, valkey_raw: Any) -> dict[str, Any]:
    """Every availability answer the engine gives, computed fresh (no cached beacon)."""
    await valkey_raw.delete(inst.ctx.keys.snapshot)
    beacon_local(inst.ctx).fallback = None
    pool = await find_pool(inst.ctx, inst.clock.now())
    board = await dashboard(inst, cast.admin)
    return {
        "beacon": state_of(await beacon(inst)),
        "mitras": {
            name: await availability_of(inst, cast.customer, mitra.id)
            for name, mitra in zip(
                ("reachable", "busy", "stale", "deactivated"), cast.mitras, strict=True
            )
        },
        "available": sorted(pool.available),
        "pool": sorted(pool.reachable.items()),
        "pool_source": pool.source,
        "dashboard": board,
    }


async def test_fallback_answers_equal_the_valkey_answers_from_just_before_the_cut(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy, valkey: Any
) -> None:
    inst = valkey_fault_app
    statuses = record_statuses(inst)
    cast = await build_cast(inst)
    written = await run_heartbeat_writeback(inst.ctx, inst.clock.now())
    assert written.ran and written.affected == 2  # the two pings reach last_heartbeat_at

    before = await all_answers(inst, cast, valkey)
    assert before["pool_source"] == "valkey" and before["dashboard"]["source"] == "valkey"
    # The answers are right, not merely equal: the comparison below means something.
    assert before["beacon"] == ("available", 1)
    assert before["mitras"] == {
        "reachable": {"reachable": True, "available": True},
        "busy": {"reachable": True, "available": False},
        "stale": {"reachable": False, "available": False},
        "deactivated": {"reachable": False, "available": False},
    }
    assert before["available"] == [str(cast.reachable.id)]
    assert {c[0] for c in before["pool"]} == {str(cast.reachable.id), str(cast.busy.id)}
    assert before["dashboard"] == {
        "online_count": 3,
        "available_count": 1,
        "deactivated_count": 1,
        "sessions": {"pending_payment": 0, "active": 1},
        "source": "valkey",
    }
    fallbacks = await fallback_reads(inst)

    await valkey_proxy.cut()
    after = await all_answers(inst, cast, valkey)
    assert after["pool_source"] == "postgres" and after["dashboard"]["source"] == "postgres"
    for field in ("beacon", "mitras", "available", "pool"):
        assert after[field] == before[field], field
    assert {k: v for k, v in after["dashboard"].items() if k != "source"} == {
        k: v for k, v in before["dashboard"].items() if k != "source"
    }
    assert not inst.ctx.mirror.reachable and not inst.ctx.mirror.trusted
    assert await fallback_reads(inst) >= fallbacks + 7  # pool, dashboard, beacon, 4 mitras
    assert not [s for s in statuses if s[1] >= 500], statuses


async def test_writes_succeed_during_the_outage_and_the_mirror_reseeds_itself(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy, valkey: Any, pg: asyncpg.Connection
) -> None:
    inst = valkey_fault_app
    statuses = record_statuses(inst)
    cast = await build_cast(inst)
    await run_heartbeat_writeback(inst.ctx, inst.clock.now())
    newcomer = await make_user(inst.ctx, "mitra")  # offline until the outage
    errors = await valkey_errors(inst)

    await valkey_proxy.cut()
    # Postgres first: each write commits and answers 200 although the mirror misses it.
    r = await inst.client.post("/api/mitra/status/offline", headers=cast.reachable.headers)
    assert r.status_code == 200 and r.json() == {"is_online": False}, r.text
    r = await inst.client.patch(
        f"/api/admin/mitras/{cast.stale.id}", json={"is_active": False}, headers=cast.admin.headers
    )
    assert r.status_code == 200 and r.json()["mitra"]["is_active"] is False, r.text
    r = await inst.client.post("/api/mitra/status/online", headers=newcomer.headers)
    assert r.status_code == 200 and r.json() == {"is_online": True}, r.text
    rows = {
        str(row["id"]): (row["is_online"], row["is_active"])
        for row in await pg.fetch("SELECT id, is_online, is_active FROM mitras")
    }
    assert rows[str(cast.reachable.id)] == (False, True)
    assert rows[str(cast.stale.id)] == (False, False)
    assert rows[str(newcomer.id)] == (True, True)
    assert await valkey_errors(inst) >= errors + 3  # each missed write is counted
    # The fallback already sees the writes (Postgres is the truth).
    assert await availability_of(inst, cast.customer, cast.reachable.id) == {
        "reachable": False,
        "available": False,
    }
    # Valkey itself never heard of them.
    assert await valkey.sismember(inst.ctx.keys.online, str(cast.reachable.id))
    assert not await valkey.sismember(inst.ctx.keys.deactivated, str(cast.stale.id))
    assert not await valkey.sismember(inst.ctx.keys.online, str(newcomer.id))

    await valkey_proxy.restore()
    # No operator action: the probe notices, reseeds, and trusts the mirror again.
    await eventually(lambda: inst.ctx.mirror.trusted and inst.ctx.mirror.reachable)
    assert not await valkey.sismember(inst.ctx.keys.online, str(cast.reachable.id))
    assert await valkey.sismember(inst.ctx.keys.deactivated, str(cast.stale.id))
    assert await valkey.sismember(inst.ctx.keys.online, str(newcomer.id))
    assert await valkey.get(inst.ctx.keys.heartbeat(newcomer.id)) is not None
    r = await inst.client.get("/api/admin/availability/drift", headers=cast.admin.headers)
    assert r.status_code == 200 and r.json()["in_sync"] is True, r.text
    board = await dashboard(inst, cast.admin)
    assert board["source"] == "valkey"
    assert (board["online_count"], board["deactivated_count"]) == (2, 2)  # busy, newcomer
    assert not [s for s in statuses if s[1] >= 500], statuses


async def test_breaker_one_request_pays_the_timeout_then_postgres_answers_alone(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy
) -> None:
    inst = valkey_fault_app
    statuses = record_statuses(inst)
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    mitra = await online_mitra(inst)
    assert await availability_of(inst, customer, mitra.id) == {"reachable": True, "available": True}
    assert inst.ctx.mirror.trusted

    await valkey_proxy.blackhole()
    errors, fallbacks = await valkey_errors(inst), await fallback_reads(inst)
    # The first request runs into the operation timeout, answers from Postgres, and
    # opens the breaker.
    assert await availability_of(inst, customer, mitra.id) == {"reachable": True, "available": True}
    assert not inst.ctx.mirror.reachable
    assert await valkey_errors(inst) == errors + 1
    assert await fallback_reads(inst) == fallbacks + 1

    # The next requests do not even try Valkey: not one more Valkey error, every one of
    # them a Postgres answer, every one of them right.
    rounds = 10
    for _ in range(rounds):
        assert await availability_of(inst, customer, mitra.id) == {
            "reachable": True,
            "available": True,
        }
        beacon_local(inst.ctx).fallback = None  # no in-process cache: each poll reaches the engine
        assert state_of(await beacon(inst)) == ("available", 1)
        r = await heartbeat(inst, mitra)
        assert r.status_code == 200, r.text
        board = await dashboard(inst, admin)
        assert (board["source"], board["online_count"], board["available_count"]) == (
            "postgres",
            1,
            1,
        )
    assert await valkey_errors(inst) == errors + 1
    assert await fallback_reads(inst) == fallbacks + 1 + 4 * rounds

    await valkey_proxy.restore()
    await eventually(lambda: inst.ctx.mirror.trusted and inst.ctx.mirror.reachable)
    board = await dashboard(inst, admin)
    assert (board["source"], board["online_count"], board["available_count"]) == ("valkey", 1, 1)
    settled = await fallback_reads(inst)
    assert await availability_of(inst, customer, mitra.id) == {"reachable": True, "available": True}
    assert await fallback_reads(inst) == settled  # answered by Valkey again
    assert not [s for s in statuses if s[1] >= 500], statuses


async def test_after_restore_the_beacon_drops_its_pre_outage_snapshot_and_caches_again(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy
) -> None:
    inst = valkey_fault_app
    leaving = await online_mitra(inst)
    await online_mitra(inst)  # stays online throughout
    assert state_of(await beacon(inst)) == ("available", 2)  # cached in Valkey for the TTL

    await valkey_proxy.cut()
    r = await inst.client.post("/api/mitra/status/offline", headers=leaving.headers)
    assert r.status_code == 200, r.text
    assert state_of(await beacon(inst)) == ("available", 1)  # Postgres knows

    await valkey_proxy.restore()
    await eventually(lambda: inst.ctx.mirror.trusted)
    computed = await _snapshot_computations(inst)
    # The reseed threw the pre-outage snapshot away: one fresh computation, then the
    # cache serves every poll again (no poll waits for a lock nobody will release).
    for _ in range(5):
        assert state_of(await beacon(inst)) == ("available", 1)
    assert await _snapshot_computations(inst) == {**computed, "valkey": computed["valkey"] + 1}


async def _snapshot_computations(inst: Instance) -> dict[str, float]:
    return {
        source: await metric_sum(
            inst, "halobestie_availability_snapshot_computations_total", source=source
        )
        for source in ("valkey", "valkey_unlocked", "postgres")
    }
