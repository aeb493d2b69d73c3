"""Accepting an offer: the first accept wins exactly once; everyone else is told why not."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from uuid import UUID

import asyncpg

from halobestie.timers import run_due_timers
from tests.conftest import AppFactory, Instance
from tests.factories import make_user
from tests.failures.helpers import online_mitra

from .support import (
    Inbox,
    accept,
    cancel,
    get_request,
    offers_of,
    online_mitras,
    open_ok,
    open_sessions_in_postgres,
)


async def test_twenty_simultaneous_accepts_have_exactly_one_winner(
    make_app: AppFactory, pg: asyncpg.Connection, valkey: Any
) -> None:
    # A pool as large as the crowd: all twenty transactions really race for the row.
    async with make_app(PAIRING_FANOUT=20, DATABASE_POOL_SIZE=30) as inst:
        customer = await make_user(inst.ctx, "customer")
        mitras = await online_mitras(inst, 20)
        request = await open_ok(inst, customer, duration_minutes=15)
        assert len(request["offered_to"]) == 20

        responses = await asyncio.gather(*(accept(inst, m, request["id"]) for m in mitras))

        outcomes = Counter((r.status_code, r.json().get("error")) for r in responses)
        assert outcomes == {(200, None): 1, (409, "already_taken"): 19}
        [winner_response] = [r for r in responses if r.status_code == 200]
        session = winner_response.json()["session"]
        winner = next(m for m in mitras if str(m.id) == session["mitra_id"])
        assert session["customer_id"] == str(customer.id)
        assert session["status"] == "pending_payment"
        assert session["duration_minutes"] == 15
        rows = await pg.fetch(
            "SELECT id, mitra_id FROM chat_sessions WHERE pairing_request_id = $1",
            UUID(request["id"]),
        )
        assert [(str(r["id"]), r["mitra_id"]) for r in rows] == [(session["id"], winner.id)]
        assert await open_sessions_in_postgres(pg, winner.id) == 1
        assert await valkey.get(f"mitra:capacity:{winner.id}") == "1"
        for mitra in mitras:
            if mitra is not winner:
                assert await valkey.get(f"mitra:capacity:{mitra.id}") == "0"
        matched = (await get_request(inst, customer, request["id"])).json()["pairing_request"]
        assert (matched["status"], matched["session_id"]) == ("matched", session["id"])


async def test_accept_creates_the_session_closes_the_offer_and_tells_everyone(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 3)
    inbox = Inbox().attach(inst, customer, *mitras)
    request = await open_ok(inst, customer)
    winner, *losers = mitras

    r = await accept(inst, winner, request["id"])

    assert r.status_code == 200, r.text
    session = r.json()["session"]
    assert set(session) >= {
        "id",
        "customer_id",
        "mitra_id",
        "status",
        "duration_minutes",
        "started_at",
        "ends_at",
    }
    for loser in losers:
        assert inbox.of(loser, "pairing.taken") == [{"request_id": request["id"]}]
        assert await offers_of(inst, loser) == []
    assert inbox.of(winner, "pairing.taken") == []
    for party in (customer, winner):
        assert [e["session"]["id"] for e in inbox.of(party, "session.updated")] == [session["id"]]
    timers = await pg.fetch("SELECT kind, ref_id FROM timers")
    assert [(t["kind"], str(t["ref_id"])) for t in timers] == [("payment_timeout", session["id"])]
    # Its expiry cannot fire any more: the request stays matched.
    inst.clock.advance(31)
    await run_due_timers(inst.ctx, inst.clock.now())
    matched = (await get_request(inst, customer, request["id"])).json()["pairing_request"]
    assert matched["status"] == "matched"
    assert inbox.of(customer, "pairing.expired") == []


async def test_a_retried_winning_accept_returns_the_same_session(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    [mitra] = await online_mitras(inst, 1)
    request = await open_ok(inst, customer)
    first = await accept(inst, mitra, request["id"])

    again = await accept(inst, mitra, request["id"])

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await pg.fetchval("SELECT count(*) FROM chat_sessions") == 1


async def test_a_mitra_not_offered_gets_403_not_offered(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    offered = await online_mitra(inst)
    request = await open_ok(inst, customer, mitra_id=str(offered.id))
    for outsider in (await online_mitra(inst), await make_user(inst.ctx, "mitra")):
        r = await accept(inst, outsider, request["id"])

        assert r.status_code == 403, r.text
        assert r.json()["error"] == "not_offered"
    assert (await accept(inst, offered, request["id"])).status_code == 200


async def test_a_mitra_at_capacity_gets_409_at_capacity(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    # MITRA_MAX_CONCURRENT_SESSIONS is 1: two customers are offered the only mitra.
    first_customer = await make_user(inst.ctx, "customer")
    second_customer = await make_user(inst.ctx, "customer")
    mitra = await online_mitra(inst)
    first = await open_ok(inst, first_customer)
    second = await open_ok(inst, second_customer)
    assert (await accept(inst, mitra, first["id"])).status_code == 200

    r = await accept(inst, mitra, second["id"])

    assert r.status_code == 409, r.text
    assert r.json()["error"] == "at_capacity"
    assert await open_sessions_in_postgres(pg, mitra.id) == 1
    assert await valkey.get(f"mitra:capacity:{mitra.id}") == "1"
    still = (await get_request(inst, second_customer, second["id"])).json()["pairing_request"]
    assert still["status"] == "searching"


async def test_one_mitra_accepting_many_requests_at_once_gets_one_session(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app(DATABASE_POOL_SIZE=30) as inst:
        customers = [await make_user(inst.ctx, "customer") for _ in range(10)]
        mitra = await online_mitra(inst)
        requests = [await open_ok(inst, c) for c in customers]

        responses = await asyncio.gather(*(accept(inst, mitra, r["id"]) for r in requests))

        outcomes = Counter((r.status_code, r.json().get("error")) for r in responses)
        assert outcomes == {(200, None): 1, (409, "at_capacity"): 9}
        assert await open_sessions_in_postgres(pg, mitra.id) == 1


async def test_accept_after_expiry_is_request_closed_before_and_after_the_timer(
    inst: Instance,
) -> None:
    customer = await make_user(inst.ctx, "customer")
    [mitra] = await online_mitras(inst, 1)
    request = await open_ok(inst, customer)
    inst.clock.advance(30)  # exactly at expires_at: closed

    before_timer = await accept(inst, mitra, request["id"])
    assert await run_due_timers(inst.ctx, inst.clock.now()) == 1
    after_timer = await accept(inst, mitra, request["id"])

    for r in (before_timer, after_timer):
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "request_closed"


async def test_accept_after_cancel_is_request_closed(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    [mitra] = await online_mitras(inst, 1)
    request = await open_ok(inst, customer)
    assert (await cancel(inst, customer, request["id"])).status_code == 200

    r = await accept(inst, mitra, request["id"])

    assert r.status_code == 409, r.text
    assert r.json()["error"] == "request_closed"
    assert await pg.fetchval("SELECT count(*) FROM chat_sessions") == 0


async def test_accept_of_an_unknown_request_is_404(inst: Instance) -> None:
    mitra = await online_mitra(inst)

    r = await accept(inst, mitra, "00000000-0000-4000-8000-000000000000")

    assert r.status_code == 404, r.text
    assert r.json()["error"] == "not_found"
