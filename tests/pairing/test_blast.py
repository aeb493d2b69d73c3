"""Opening a pairing request: who is offered it, in what order, and what is written."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from halobestie.clock import iso, parse_iso
from tests.conftest import AppFactory, Instance
from tests.factories import Person, make_chat_session, make_user, recount_history
from tests.failures.helpers import online_mitra

from .support import (
    Inbox,
    busy_mitra,
    cancel,
    ids,
    offers_of,
    online_mitras,
    open_ok,
    open_request,
)


async def test_offers_go_to_fanout_many_available_mitras_with_timer_and_rows(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 7)
    now = inst.clock.now()

    r = await open_request(inst, customer, duration_minutes=45)

    assert r.status_code == 201, r.text
    request = r.json()["pairing_request"]
    assert request["status"] == "searching"
    assert len(request["offered_to"]) == 5  # PAIRING_FANOUT default
    assert set(request["offered_to"]) <= ids(mitras)
    expires_at = now + timedelta(seconds=30)
    assert request["expires_at"] == iso(expires_at)
    row = await pg.fetchrow("SELECT * FROM pairing_requests WHERE id = $1", UUID(request["id"]))
    assert row is not None
    assert (row["customer_id"], row["duration_minutes"], row["status"]) == (
        customer.id,
        45,
        "searching",
    )
    offered = await pg.fetch(
        "SELECT mitra_id::text FROM pairing_offers WHERE request_id = $1", row["id"]
    )
    assert {o["mitra_id"] for o in offered} == set(request["offered_to"])
    timer = await pg.fetchrow(
        "SELECT due_at, fired_at FROM timers WHERE kind = 'offer_expiry' AND ref_id = $1",
        row["id"],
    )
    assert timer is not None
    assert (timer["due_at"], timer["fired_at"]) == (expires_at, None)


async def test_fewer_available_than_fanout_offers_all_of_them(make_app: AppFactory) -> None:
    async with make_app(PAIRING_FANOUT=10) as inst:
        customer = await make_user(inst.ctx, "customer")
        mitras = await online_mitras(inst, 3)

        request = await open_ok(inst, customer)

        assert sorted(request["offered_to"]) == sorted(ids(mitras))


async def test_only_available_mitras_are_offered(inst: Instance) -> None:
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    other_customer = await make_user(inst.ctx, "customer")
    stale = await online_mitra(inst)
    inst.clock.advance(61)  # HEARTBEAT_STALE_SECONDS is 60: `stale` stopped pinging
    fresh = await online_mitras(inst, 2)
    await make_user(inst.ctx, "mitra")  # never online
    deactivated = await online_mitra(inst)
    r = await inst.client.patch(
        f"/api/admin/mitras/{deactivated.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    full = await busy_mitra(inst, other_customer)  # MITRA_MAX_CONCURRENT_SESSIONS is 1
    went_offline = await online_mitra(inst)
    r = await inst.client.post("/api/mitra/status/offline", headers=went_offline.headers)
    assert r.status_code == 200, r.text

    request = await open_ok(inst, customer)

    assert sorted(request["offered_to"]) == sorted(ids(fresh))
    assert str(stale.id) not in request["offered_to"]
    assert str(full.id) not in request["offered_to"]


async def test_no_available_mitra_is_409_and_writes_nothing(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    await busy_mitra(inst, await make_user(inst.ctx, "customer"))

    r = await open_request(inst, customer)

    assert r.status_code == 409, r.text
    assert r.json()["error"] == "no_mitra_available"
    assert await pg.fetchval("SELECT count(*) FROM pairing_requests") == 0
    assert await pg.fetchval("SELECT count(*) FROM timers") == 0


async def _session_history(
    pg: asyncpg.Connection, customer: Person, mitra: Person, *, minutes_ago: int
) -> None:
    """A finished session of `mitra` that ended `minutes_ago` minutes ago."""
    ended = await pg.fetchval("SELECT now()") - timedelta(minutes=minutes_ago)
    await pg.execute(
        "INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes,"
        " created_at, started_at, closed_at) VALUES ($1, $2, 'ended', 30, $3, $3, $4)",
        customer.id,
        mitra.id,
        ended - timedelta(minutes=30),
        ended,
    )


async def test_fair_order_least_loaded_then_longest_idle(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=2, PAIRING_FANOUT=4) as inst:
        customer = await make_user(inst.ctx, "customer")
        other = await make_user(inst.ctx, "customer")
        loaded_but_idle = await busy_mitra(inst, other)  # 1 of 2 sessions: still available
        never = await online_mitra(inst)
        long_idle, mid_idle, just_ended = await online_mitras(inst, 3)
        await _session_history(pg, other, long_idle, minutes_ago=300)
        await _session_history(pg, other, mid_idle, minutes_ago=400)
        await _session_history(pg, other, just_ended, minutes_ago=1)
        await _session_history(pg, other, loaded_but_idle, minutes_ago=900)
        # mid_idle's last session ended before long_idle's, but it started another one
        # since: the most recent start or end is what counts.
        await make_chat_session(inst.ctx, other, mid_idle, "cancelled")  # created now
        await pg.execute(
            "UPDATE chat_sessions SET created_at = now() - interval '30 minutes'"
            " WHERE mitra_id = $1 AND status = 'cancelled'",
            mid_idle.id,
        )
        await recount_history(inst.ctx, [long_idle, mid_idle, just_ended, loaded_but_idle])

        request = await open_ok(inst, customer)

        assert request["offered_to"] == [
            str(never.id),
            str(long_idle.id),
            str(mid_idle.id),
            str(just_ended.id),
        ]

        r = await cancel(inst, customer, request["id"])
        assert r.status_code == 200, r.text
        async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=2, PAIRING_FANOUT=5) as wider:
            again = await open_ok(wider, customer)
        assert again["offered_to"][-1] == str(loaded_but_idle.id)


async def test_preferred_mitra_is_offered_alone(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 4)
    chosen = mitras[2]

    request = await open_ok(inst, customer, mitra_id=str(chosen.id))

    assert request["offered_to"] == [str(chosen.id)]
    assert [o["request_id"] for o in await offers_of(inst, chosen)] == [request["id"]]
    assert await offers_of(inst, mitras[0]) == []


async def test_preferred_mitra_not_available_is_409_even_when_others_are(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    await online_mitras(inst, 2)
    offline = await make_user(inst.ctx, "mitra")
    full = await busy_mitra(inst, await make_user(inst.ctx, "customer"))

    for mitra in (offline, full):
        r = await open_request(inst, customer, mitra_id=str(mitra.id))
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "no_mitra_available"
        assert str(mitra.id) in r.json()["detail"]
    assert await pg.fetchval("SELECT count(*) FROM pairing_requests") == 0


async def test_unknown_preferred_mitra_is_404(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    await online_mitras(inst, 1)
    not_a_mitra = await make_user(inst.ctx, "customer")

    for unknown in (uuid4(), not_a_mitra.id):
        r = await open_request(inst, customer, mitra_id=str(unknown))
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found"


async def test_one_searching_request_per_customer(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    await online_mitras(inst, 2)
    first = await open_ok(inst, customer)

    r = await open_request(inst, customer)

    assert r.status_code == 409, r.text
    assert r.json()["error"] == "invalid_state"
    assert first["id"] in r.json()["detail"]
    # Another customer is not affected; after a cancel the first may search again.
    await open_ok(inst, await make_user(inst.ctx, "customer"))
    assert (await cancel(inst, customer, first["id"])).status_code == 200
    await open_ok(inst, customer)


async def test_a_search_past_its_expiry_does_not_block_the_next_one(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 1)
    inbox = Inbox().attach(inst, customer, *mitras)
    first = await open_ok(inst, customer)
    inst.clock.advance(31)  # expired, but no timer has run yet
    for mitra in mitras:
        assert (
            await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
        ).status_code == 200

    second = await open_ok(inst, customer)

    assert second["id"] != first["id"]
    assert (
        await pg.fetchval("SELECT status FROM pairing_requests WHERE id = $1", UUID(first["id"]))
        == "expired"
    )
    assert inbox.of(customer, "pairing.expired") == [
        {"request_id": first["id"], "reason": "timeout"}
    ]
    assert (
        await pg.fetchval("SELECT count(*) FROM timers WHERE ref_id = $1", UUID(first["id"])) == 0
    )


async def test_each_offered_mitra_is_pushed_the_offer_and_sees_it_listed(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 3)
    bystander = await make_user(inst.ctx, "mitra")
    inbox = Inbox().attach(inst, customer, bystander, *mitras)

    request = await open_ok(inst, customer, duration_minutes=20)

    offer = {
        "request_id": request["id"],
        "duration_minutes": 20,
        "expires_at": request["expires_at"],
    }
    for mitra in mitras:
        assert inbox.of(mitra, "pairing.offer") == [offer]
        assert await offers_of(inst, mitra) == [offer]
    assert inbox.of(customer, "pairing.offer") == []
    assert inbox.of(bystander, "pairing.offer") == []
    assert await offers_of(inst, bystander) == []


async def test_offers_list_only_open_offers(inst: Instance) -> None:
    customers = [await make_user(inst.ctx, "customer") for _ in range(3)]
    mitra = await online_mitra(inst)
    requests: list[dict[str, Any]] = []
    for customer in customers:
        requests.append(await open_ok(inst, customer))
        inst.clock.advance(5)
    assert [o["request_id"] for o in await offers_of(inst, mitra)] == [r["id"] for r in requests]

    assert (await cancel(inst, customers[1], requests[1]["id"])).status_code == 200
    assert [o["request_id"] for o in await offers_of(inst, mitra)] == [
        requests[0]["id"],
        requests[2]["id"],
    ]
    inst.clock.advance(15)  # requests[0] is now 30 s old: at its expiry, timer not yet run
    assert [o["request_id"] for o in await offers_of(inst, mitra)] == [requests[2]["id"]]
    assert parse_iso(requests[2]["expires_at"]) > inst.clock.now()
