"""GET /api/admin/availability/drift: Valkey against Postgres, difference by difference."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from halobestie.availability.sync import recompute_capacity
from halobestie.clock import iso
from tests.availability import (
    NO_DIFFERENCES,
    insert_customer,
    insert_mitra,
    insert_session,
    valkey_target,
    valkey_url_via,
)
from tests.conftest import AppFactory, Instance, Servers, eventually
from tests.factories import Person, make_chat_session, make_user
from tests.support.proxy import FaultProxy

DRIFT = "/api/admin/availability/drift"


async def _drift(inst: Instance, admin: Person) -> dict[str, Any]:
    r = await inst.client.get(DRIFT, headers=admin.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_drift_is_in_sync_right_after_the_seed(
    pg: asyncpg.Connection, make_app: AppFactory
) -> None:
    seen = datetime.now(UTC) - timedelta(seconds=3)
    busy = await insert_mitra(pg, online=True, heartbeat=seen)
    await insert_mitra(pg, online=True)
    await insert_mitra(pg, heartbeat=seen)
    await insert_mitra(pg, active=False)
    offline_busy = await insert_mitra(pg)
    customer = await insert_customer(pg)
    for mitra, status in ((busy, "active"), (busy, "ended"), (offline_busy, "pending_payment")):
        await insert_session(pg, customer, mitra, status)
    async with make_app() as inst:
        admin = await make_user(inst.ctx, "admin")
        assert await _drift(inst, admin) == {"in_sync": True, "differences": NO_DIFFERENCES}


async def test_drift_names_the_exact_ids_of_every_kind_of_difference(
    pg: asyncpg.Connection, valkey: Any, make_app: AppFactory
) -> None:
    seen = datetime.now(UTC) - timedelta(seconds=10)
    dropped = await insert_mitra(pg, online=True, heartbeat=seen)
    offline = await insert_mitra(pg)
    banned = await insert_mitra(pg, active=False)
    active = await insert_mitra(pg)
    overcounted = await insert_mitra(pg, online=True, heartbeat=seen)
    uncounted = await insert_mitra(pg, online=True, heartbeat=seen)
    unpinged = await insert_mitra(pg, online=True, heartbeat=seen)
    lagging = await insert_mitra(pg, online=True, heartbeat=seen)
    resting = await insert_mitra(pg, heartbeat=seen)
    customer = await insert_customer(pg)
    await insert_session(pg, customer, overcounted, "active")
    await insert_session(pg, customer, uncounted, "pending_payment")
    ghost = str(uuid.uuid4())
    older = iso(seen - timedelta(seconds=30))

    async with make_app() as inst:
        admin = await make_user(inst.ctx, "admin")
        await valkey.srem("mitras:online", dropped)
        await valkey.sadd("mitras:online", offline)
        await valkey.srem("mitras:deactivated", banned)
        await valkey.sadd("mitras:deactivated", active)
        await valkey.set(f"mitra:capacity:{overcounted}", "3")
        await valkey.delete(f"mitra:capacity:{uncounted}")
        await valkey.set(f"mitra:capacity:{ghost}", "2")
        await valkey.delete(f"mitra:heartbeat:{unpinged}")
        await valkey.set(f"mitra:heartbeat:{lagging}", older)
        await valkey.set(f"mitra:heartbeat:{resting}", iso(seen))
        await valkey.zrem("mitras:ranked", lagging)
        await valkey.zadd("mitras:ranked", {offline: 0})
        await valkey.zadd("mitras:ranked", {unpinged: 10**13 + 5})  # one load band up

        body = await _drift(inst, admin)

        assert body["in_sync"] is False
        assert body["differences"] == {
            "online": {"missing": [dropped], "extra": [offline]},
            "deactivated": {"missing": [banned], "extra": [active]},
            "capacity": {
                overcounted: {"valkey": 3, "postgres": 1},
                uncounted: {"valkey": 0, "postgres": 1},
                ghost: {"valkey": 2, "postgres": 0},
            },
            "heartbeat": {
                unpinged: {"valkey": None, "postgres": iso(seen)},
                lagging: {"valkey": older, "postgres": iso(seen)},
                resting: {"valkey": iso(seen), "postgres": None},
            },
            "ranked": {
                "missing": [lagging],
                "extra": [offline],
                "score": {
                    unpinged: {
                        "valkey": {"open_sessions": 1, "idle_since": "1970-01-01T00:00:00.005000Z"},
                        "postgres": {"open_sessions": 0, "idle_since": None},
                    }
                },
            },
        }
        # Reporting repairs nothing; a reseed does.
        assert await _drift(inst, admin) == body
        r = await inst.client.post("/api/admin/availability/reseed", headers=admin.headers)
        assert r.status_code == 200
        assert await _drift(inst, admin) == {"in_sync": True, "differences": NO_DIFFERENCES}


async def test_mirror_heartbeat_ahead_of_postgres_is_write_back_lag_not_drift(
    inst: Instance,
) -> None:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    inst.clock.advance(15)
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
    assert r.status_code == 200
    assert (await _drift(inst, admin))["in_sync"] is True


async def test_write_through_keeps_the_report_in_sync(inst: Instance) -> None:
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    mitras = [await make_user(inst.ctx, "mitra") for _ in range(3)]
    for mitra in mitras:
        await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    await inst.client.post("/api/mitra/status/offline", headers=mitras[0].headers)
    await inst.client.patch(
        f"/api/admin/mitras/{mitras[1].id}", json={"is_active": False}, headers=admin.headers
    )
    await make_chat_session(inst.ctx, customer, mitras[2], "active")
    await recompute_capacity(inst.ctx, mitras[2].id)
    inst.clock.advance(5)
    await inst.client.post("/api/mitra/status/heartbeat", headers=mitras[2].headers)
    assert await _drift(inst, admin) == {"in_sync": True, "differences": NO_DIFFERENCES}


async def test_drift_is_503_valkey_unavailable_while_valkey_is_unreachable(
    make_app: AppFactory, servers: Servers
) -> None:
    async with FaultProxy(valkey_target(servers)) as proxy:
        async with make_app(VALKEY_URL=valkey_url_via(servers, proxy.port)) as inst:
            admin = await make_user(inst.ctx, "admin")
            await proxy.cut()
            try:
                for _ in range(2):  # first noticing the outage, then with the breaker open
                    r = await inst.client.get(DRIFT, headers=admin.headers)
                    assert r.status_code == 503, r.text
                    assert r.json()["error"] == "valkey_unavailable"
                    assert isinstance(r.json()["detail"], str)
                r = await inst.client.post("/api/admin/availability/reseed", headers=admin.headers)
                assert r.status_code == 503
                assert r.json()["error"] == "valkey_unavailable"
            finally:
                await proxy.restore()
            await eventually(lambda: inst.ctx.mirror.trusted)
            assert (await _drift(inst, admin))["in_sync"] is True


async def test_drift_report_is_admin_only(inst: Instance) -> None:
    for role in ("customer", "mitra"):
        person = await make_user(inst.ctx, role)
        r = await inst.client.get(DRIFT, headers=person.headers)
        assert r.status_code == 403
    assert (await inst.client.get(DRIFT)).status_code == 401
