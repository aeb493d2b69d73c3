"""Readers on the happy path: one mitra's reachability, the available pool, the dashboard."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from halobestie.availability import queries
from halobestie.availability.queries import find_available_mitras, find_pool, pool_from_postgres
from halobestie.availability.sweeps import run_heartbeat_writeback
from halobestie.availability.sync import recompute_capacity
from tests.availability import insert_customer, insert_mitra, insert_session
from tests.conftest import AppFactory, Instance
from tests.factories import Person, make_chat_session, make_user


async def _online_mitra(inst: Instance) -> Person:
    mitra = await make_user(inst.ctx, "mitra")
    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    return mitra


async def _availability(inst: Instance, who: Person, mitra_id: object) -> dict[str, Any]:
    r = await inst.client.get(f"/api/mitras/{mitra_id}/availability", headers=who.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_fresh_online_mitra_is_reachable_and_available(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitra = await _online_mitra(inst)
    assert await _availability(inst, customer, mitra.id) == {"reachable": True, "available": True}


async def test_stale_heartbeat_makes_a_mitra_unreachable_until_it_pings(
    make_app: AppFactory,
) -> None:
    async with make_app(HEARTBEAT_STALE_SECONDS=30) as inst:
        customer = await make_user(inst.ctx, "customer")
        mitra = await _online_mitra(inst)
        inst.clock.advance(29)
        assert (await _availability(inst, customer, mitra.id))["reachable"] is True

        inst.clock.advance(2)
        assert await _availability(inst, customer, mitra.id) == {
            "reachable": False,
            "available": False,
        }

        await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
        assert await _availability(inst, customer, mitra.id) == {
            "reachable": True,
            "available": True,
        }


async def test_mitra_at_capacity_is_reachable_but_not_available(make_app: AppFactory) -> None:
    async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=2) as inst:
        customer = await make_user(inst.ctx, "customer")
        mitra = await _online_mitra(inst)
        await make_chat_session(inst.ctx, customer, mitra, "active")
        await recompute_capacity(inst.ctx, mitra.id)
        assert (await _availability(inst, customer, mitra.id))["available"] is True

        await make_chat_session(inst.ctx, customer, mitra, "pending_payment")
        await recompute_capacity(inst.ctx, mitra.id)
        assert await _availability(inst, customer, mitra.id) == {
            "reachable": True,
            "available": False,
        }


async def test_offline_and_deactivated_mitras_are_neither(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    admin = await make_user(inst.ctx, "admin")
    never_online = await make_user(inst.ctx, "mitra")
    gone_offline = await _online_mitra(inst)
    await inst.client.post("/api/mitra/status/offline", headers=gone_offline.headers)
    banned = await _online_mitra(inst)
    await inst.client.patch(
        f"/api/admin/mitras/{banned.id}", json={"is_active": False}, headers=admin.headers
    )
    for mitra in (never_online, gone_offline, banned):
        assert await _availability(inst, customer, mitra.id) == {
            "reachable": False,
            "available": False,
        }


async def test_availability_reads_the_mirror_not_postgres(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitra = await _online_mitra(inst)
    await valkey.srem("mitras:online", str(mitra.id))  # Postgres still says online
    assert await pg.fetchval("SELECT is_online FROM mitras WHERE id = $1", mitra.id) is True
    assert (await _availability(inst, customer, mitra.id))["reachable"] is False


async def test_unknown_mitra_is_404_and_malformed_id_is_422(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    r = await inst.client.get(f"/api/mitras/{uuid.uuid4()}/availability", headers=customer.headers)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    # A customer's id is not a mitra's.
    r = await inst.client.get(f"/api/mitras/{customer.id}/availability", headers=customer.headers)
    assert r.status_code == 404
    for bad in ("not-a-uuid", "123", "%20"):
        r = await inst.client.get(f"/api/mitras/{bad}/availability", headers=customer.headers)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"] == "invalid_request"


async def test_mitra_availability_is_for_customers(inst: Instance) -> None:
    mitra = await _online_mitra(inst)
    r = await inst.client.get(f"/api/mitras/{mitra.id}/availability", headers=mitra.headers)
    assert r.status_code == 403
    r = await inst.client.get(f"/api/mitras/{mitra.id}/availability")
    assert r.status_code == 401


async def test_find_available_mitras_keeps_only_fresh_active_mitras_below_capacity(
    make_app: AppFactory,
) -> None:
    async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=2, HEARTBEAT_STALE_SECONDS=60) as inst:
        admin = await make_user(inst.ctx, "admin")
        customer = await make_user(inst.ctx, "customer")
        stale = await _online_mitra(inst)
        inst.clock.advance(61)
        idle = await _online_mitra(inst)
        half_busy = await _online_mitra(inst)
        full = await _online_mitra(inst)
        banned = await _online_mitra(inst)
        await make_user(inst.ctx, "mitra")  # never online
        await make_chat_session(inst.ctx, customer, half_busy, "active")
        for status in ("active", "pending_payment"):
            await make_chat_session(inst.ctx, customer, full, status)
        for mitra in (half_busy, full):
            await recompute_capacity(inst.ctx, mitra.id)
        await inst.client.patch(
            f"/api/admin/mitras/{banned.id}", json={"is_active": False}, headers=admin.headers
        )

        found = await find_available_mitras(inst.ctx, inst.clock.now())

        assert found == {str(idle.id): 0, str(half_busy.id): 1}
        pool = await find_pool(inst.ctx, inst.clock.now())
        assert pool.source == "valkey"
        assert pool.reachable == {str(idle.id): 0, str(half_busy.id): 1, str(full.id): 2}
        assert str(stale.id) not in pool.reachable


async def test_postgres_fallback_pool_equals_the_mirror_pool_after_write_back(
    inst: Instance,
) -> None:
    """The two paths compute the same answer once heartbeats are written back."""
    customer = await make_user(inst.ctx, "customer")
    pinging = await _online_mitra(inst)
    silent = await _online_mitra(inst)
    busy = await _online_mitra(inst)
    await make_chat_session(inst.ctx, customer, busy, "active")
    await recompute_capacity(inst.ctx, busy.id)
    inst.clock.advance(45)
    await inst.client.post("/api/mitra/status/heartbeat", headers=pinging.headers)
    await inst.client.post("/api/mitra/status/heartbeat", headers=busy.headers)
    now = inst.clock.advance(20)  # silent is stale now; the others pinged 20 s ago
    await run_heartbeat_writeback(inst.ctx, now)

    mirror = await find_pool(inst.ctx, now)
    fallback = await pool_from_postgres(inst.ctx, now)

    assert mirror.source == "valkey"
    assert mirror.reachable == fallback
    assert set(fallback) == {str(pinging.id), str(busy.id)}
    assert str(silent.id) not in mirror.reachable


async def test_dashboard_counts_come_from_the_mirror(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(HEARTBEAT_STALE_SECONDS=60) as inst:
        admin = await make_user(inst.ctx, "admin")
        customer = await make_user(inst.ctx, "customer")
        stale = await _online_mitra(inst)
        inst.clock.advance(120)
        free = await _online_mitra(inst)
        busy = await _online_mitra(inst)
        for banned in (await _online_mitra(inst), await make_user(inst.ctx, "mitra")):
            await inst.client.patch(
                f"/api/admin/mitras/{banned.id}", json={"is_active": False}, headers=admin.headers
            )
        await make_chat_session(inst.ctx, customer, busy, "active")
        await make_chat_session(inst.ctx, customer, stale, "active")
        await make_chat_session(inst.ctx, customer, free, "ended")
        other = await make_user(inst.ctx, "mitra")
        await make_chat_session(inst.ctx, customer, other, "pending_payment")
        for mitra in (busy, stale, free, other):
            await recompute_capacity(inst.ctx, mitra.id)

        r = await inst.client.get("/api/admin/dashboard", headers=admin.headers)

        assert r.status_code == 200, r.text
        assert r.json() == {
            "online_count": 3,  # SCARD: the stale one stays online until the sweep
            "available_count": 1,
            "deactivated_count": 2,
            "sessions": {"pending_payment": 1, "active": 2},
            "source": "valkey",
        }
        assert await pg.fetchval("SELECT count(*) FROM mitras WHERE is_online") == 3

        r = await inst.client.get("/api/admin/dashboard", headers=customer.headers)
        assert r.status_code == 403


async def test_a_pool_streamed_over_many_chunks_equals_the_postgres_pool(
    make_app: AppFactory, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """find-available streams its MGETs chunk by chunk and builds the pool as replies
    arrive: with small chunks (many of them, with loop yields in between), every online
    mitra must still land with its own heartbeat and capacity, nobody twice or missing."""
    monkeypatch.setattr(queries, "CHUNK_IDS", 7)
    monkeypatch.setattr(queries, "YIELD_EVERY", 3)
    now = datetime.now(UTC)
    fresh, stale = now - timedelta(seconds=5), now - timedelta(seconds=600)
    customer = await insert_customer(pg)
    expected: dict[str, int] = {}
    for n in range(150):
        mitra = await insert_mitra(
            pg, online=n % 10 != 9, active=n % 25 != 0, heartbeat=stale if n % 7 == 0 else fresh
        )
        load = n % 3  # 0, 1 or 2 open sessions
        for _ in range(load):
            await insert_session(pg, customer, mitra, "active")
        if n % 10 != 9 and n % 25 != 0 and n % 7 != 0:
            expected[mitra] = load
    async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=2, HEARTBEAT_STALE_SECONDS=60) as inst:
        pool = await find_pool(inst.ctx, now)
        fallback = await pool_from_postgres(inst.ctx, now)

    assert pool.source == "valkey"
    assert pool.reachable == expected == fallback
    assert pool.available == {m: load for m, load in expected.items() if load < 2}
