"""Write-through: every committed change reaches the mirror at once, and the heartbeat
endpoint's contract."""

from __future__ import annotations

import random
from typing import Any
from uuid import UUID

import asyncpg

from halobestie.availability.sync import recompute_capacity
from halobestie.clock import iso
from tests.availability import members, open_sessions
from tests.conftest import AppFactory, Instance
from tests.factories import make_chat_session, make_user


async def test_going_online_adds_to_set_sets_heartbeat_and_postgres_timestamp(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    now = inst.clock.advance(3)

    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)

    assert r.status_code == 200, r.text
    assert r.json() == {"is_online": True}
    assert await valkey.sismember("mitras:online", str(mitra.id)) == 1
    assert await valkey.get(f"mitra:heartbeat:{mitra.id}") == iso(now)
    assert await valkey.get(f"mitra:capacity:{mitra.id}") == "0"
    row = await pg.fetchrow(
        "SELECT is_online, last_heartbeat_at FROM mitras WHERE id = $1", mitra.id
    )
    assert row is not None
    assert row["is_online"] is True
    assert row["last_heartbeat_at"] == now


async def test_going_offline_removes_from_set_and_deletes_heartbeat(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    other = await make_user(inst.ctx, "mitra")
    for person in (mitra, other):
        await inst.client.post("/api/mitra/status/online", headers=person.headers)

    r = await inst.client.post("/api/mitra/status/offline", headers=mitra.headers)

    assert r.status_code == 200, r.text
    assert r.json() == {"is_online": False}
    assert await members(valkey, "mitras:online") == {str(other.id)}
    assert await valkey.get(f"mitra:heartbeat:{mitra.id}") is None
    assert await valkey.get(f"mitra:heartbeat:{other.id}") is not None
    assert await pg.fetchval("SELECT is_online FROM mitras WHERE id = $1", mitra.id) is False


async def test_admin_deactivation_mirrors_the_set_takes_offline_and_revokes_logins(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    await inst.client.post("/api/mitra/status/online", headers=mitra.headers)

    r = await inst.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
    )

    assert r.status_code == 200, r.text
    assert r.json()["mitra"]["is_active"] is False
    assert r.json()["mitra"]["is_online"] is False
    assert await members(valkey, "mitras:deactivated") == {str(mitra.id)}
    assert await valkey.sismember("mitras:online", str(mitra.id)) == 0
    assert await valkey.get(f"mitra:heartbeat:{mitra.id}") is None
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL", mitra.id
        )
        == 0
    )
    r = await inst.client.get("/api/mitra/status", headers=mitra.headers)
    assert (r.status_code, r.json()["error"]) == (403, "mitra_deactivated")

    r = await inst.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": True}, headers=admin.headers
    )

    assert r.status_code == 200, r.text
    assert r.json()["mitra"]["is_active"] is True
    assert r.json()["mitra"]["is_online"] is False  # reactivation does not put them online
    assert await members(valkey, "mitras:deactivated") == set()
    assert await valkey.sismember("mitras:online", str(mitra.id)) == 0


async def test_capacity_holds_the_count_of_open_sessions_down_to_zero(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitra = await make_user(inst.ctx, "mitra")
    key = f"mitra:capacity:{mitra.id}"
    first = await make_chat_session(inst.ctx, customer, mitra, "pending_payment")
    await recompute_capacity(inst.ctx, mitra.id)
    assert await valkey.get(key) == "1"

    second = await make_chat_session(inst.ctx, customer, mitra, "active")
    await make_chat_session(inst.ctx, customer, mitra, "ended")
    await recompute_capacity(inst.ctx, mitra.id)
    assert await valkey.get(key) == "2"

    await pg.execute("UPDATE chat_sessions SET status = 'active' WHERE id = $1", first)
    await recompute_capacity(inst.ctx, mitra.id)
    assert await valkey.get(key) == "2"  # pending_payment -> active keeps the slot

    await pg.execute("UPDATE chat_sessions SET status = 'cancelled' WHERE id = $1", first)
    await recompute_capacity(inst.ctx, mitra.id)
    assert await valkey.get(key) == "1"

    await pg.execute("UPDATE chat_sessions SET status = 'expired' WHERE id = $1", second)
    await recompute_capacity(inst.ctx, mitra.id)
    assert await valkey.get(key) == "0"  # written, not deleted: "0" after the last one ends


async def test_capacity_is_rederived_never_incremented(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitra = await make_user(inst.ctx, "mitra")
    key = f"mitra:capacity:{mitra.id}"
    await valkey.set(key, "7")  # a wrong value: INCR/DECR would build on it
    await make_chat_session(inst.ctx, customer, mitra, "active")
    await recompute_capacity(inst.ctx, mitra.id)
    assert await valkey.get(key) == "1"

    rng = random.Random(20240525)
    statuses = ["pending_payment", "active", "ended", "expired", "cancelled", "rerouted"]
    sessions: list[UUID] = []
    for _ in range(40):
        if not sessions or rng.random() < 0.4:
            sessions.append(
                await make_chat_session(inst.ctx, customer, mitra, rng.choice(statuses[:2]))
            )
        else:
            await pg.execute(
                "UPDATE chat_sessions SET status = $2 WHERE id = $1",
                rng.choice(sessions),
                rng.choice(statuses),
            )
        if rng.random() < 0.3:  # writes racing in from elsewhere never stick
            await valkey.incr(key)
        await recompute_capacity(inst.ctx, mitra.id)
        assert await valkey.get(key) == str(await open_sessions(pg, mitra.id))


async def test_heartbeat_reports_when_to_ping_next_and_touches_only_valkey(
    make_app: AppFactory, valkey: Any, pg: asyncpg.Connection
) -> None:
    async with make_app(HEARTBEAT_INTERVAL_SECONDS=7) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
        online_at = inst.clock.now()
        now = inst.clock.advance(5)

        r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)

        assert r.status_code == 200, r.text
        assert r.json() == {"is_online": True, "at": iso(now), "next_heartbeat_in_seconds": 7}
        assert await valkey.get(f"mitra:heartbeat:{mitra.id}") == iso(now)
        # The hot path leaves Postgres alone; the write-back sweep carries it over.
        stored = await pg.fetchval("SELECT last_heartbeat_at FROM mitras WHERE id = $1", mitra.id)
        assert stored == online_at


async def test_heartbeat_while_offline_is_409_not_online(inst: Instance, valkey: Any) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
    assert r.status_code == 409
    assert r.json()["error"] == "not_online"

    await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    await inst.client.post("/api/mitra/status/offline", headers=mitra.headers)
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
    assert r.status_code == 409
    assert r.json()["error"] == "not_online"
    assert await valkey.get(f"mitra:heartbeat:{mitra.id}") is None  # no ping recorded


async def test_heartbeat_from_deactivated_mitra_is_403(inst: Instance, valkey: Any) -> None:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    await inst.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
    )

    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)

    assert r.status_code == 403
    assert r.json()["error"] == "mitra_deactivated"
    assert await valkey.get(f"mitra:heartbeat:{mitra.id}") is None


async def test_heartbeat_refuses_customers(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=customer.headers)
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    r = await inst.client.post("/api/mitra/status/heartbeat")
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"


async def test_heartbeat_never_moves_the_timestamp_backwards(inst: Instance, valkey: Any) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    later = inst.clock.advance(30)
    await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
    inst.clock.advance(-10)  # another instance whose clock lags

    r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)

    assert r.status_code == 200
    assert await valkey.get(f"mitra:heartbeat:{mitra.id}") == iso(later)
