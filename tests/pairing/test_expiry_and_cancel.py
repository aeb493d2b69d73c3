"""An offer nobody accepts expires (durable timer, once); the customer can cancel; a
request is visible to its customer only."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg

from halobestie.timers import run_due_timers
from tests.conftest import AppFactory, Instance
from tests.factories import make_user

from .support import Inbox, accept, cancel, get_request, offers_of, online_mitras, open_ok


async def test_an_unaccepted_request_expires_at_its_due_time_and_everyone_is_told(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 2)
    inbox = Inbox().attach(inst, customer, *mitras)
    request = await open_ok(inst, customer)

    inst.clock.advance(29)
    assert await run_due_timers(inst.ctx, inst.clock.now()) == 0
    assert (await get_request(inst, customer, request["id"])).json()["pairing_request"][
        "status"
    ] == "searching"
    inst.clock.advance(1)
    assert await run_due_timers(inst.ctx, inst.clock.now()) == 1

    expired = (await get_request(inst, customer, request["id"])).json()["pairing_request"]
    assert expired["status"] == "expired"
    assert expired["session_id"] is None
    event = {"request_id": request["id"], "reason": "timeout"}
    for person in (customer, *mitras):
        assert inbox.of(person, "pairing.expired") == [event]
    for mitra in mitras:
        assert await offers_of(inst, mitra) == []
    assert await pg.fetchval(
        "SELECT closed_at IS NOT NULL FROM pairing_requests WHERE id = $1", UUID(request["id"])
    )


async def test_expiry_fires_once_when_the_timers_run_twice(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 1)
    inbox = Inbox().attach(inst, customer, *mitras)
    await open_ok(inst, customer)
    now = inst.clock.advance(31)

    assert await run_due_timers(inst.ctx, now) == 1
    assert await run_due_timers(inst.ctx, now) == 0
    assert len(inbox.of(customer, "pairing.expired")) == 1


async def test_expiry_fires_once_across_two_instances_running_timers_at_once(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    async with make_app() as a:
        async with make_app(clock=a.clock) as b:
            mitras = await online_mitras(a, 3)
            customers = [await make_user(a.ctx, "customer") for _ in range(6)]
            request_ids = [UUID((await open_ok(a, c))["id"]) for c in customers]
            assert len(mitras) == 3
            now = a.clock.advance(31)

            fired = await asyncio.gather(*(run_due_timers(inst.ctx, now) for inst in (a, b, a, b)))

            assert sum(fired) == len(request_ids)
            rows = await pg.fetch(
                "SELECT status FROM pairing_requests WHERE id = ANY($1::uuid[])", request_ids
            )
            assert [r["status"] for r in rows] == ["expired"] * len(request_ids)


async def test_cancel_closes_the_request_tells_the_mitras_and_drops_the_timer(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 2)
    inbox = Inbox().attach(inst, *mitras)
    request = await open_ok(inst, customer)

    r = await cancel(inst, customer, request["id"])

    assert r.status_code == 200, r.text
    cancelled = r.json()["pairing_request"]
    assert (cancelled["id"], cancelled["status"]) == (request["id"], "cancelled")
    assert sorted(cancelled["offered_to"]) == sorted(request["offered_to"])
    for mitra in mitras:
        assert inbox.of(mitra, "pairing.expired") == [
            {"request_id": request["id"], "reason": "cancelled"}
        ]
        assert await offers_of(inst, mitra) == []
    assert await pg.fetchval("SELECT count(*) FROM timers") == 0
    inst.clock.advance(60)
    assert await run_due_timers(inst.ctx, inst.clock.now()) == 0
    assert (await get_request(inst, customer, request["id"])).json()["pairing_request"][
        "status"
    ] == "cancelled"


async def test_cancelling_twice_returns_the_cancelled_request(inst: Instance) -> None:
    customer = await make_user(inst.ctx, "customer")
    mitras = await online_mitras(inst, 1)
    inbox = Inbox().attach(inst, *mitras)
    request = await open_ok(inst, customer)
    first = await cancel(inst, customer, request["id"])

    second = await cancel(inst, customer, request["id"])

    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    assert len(inbox.of(mitras[0], "pairing.expired")) == 1


async def test_cancel_once_matched_or_expired_is_409_invalid_state(inst: Instance) -> None:
    matched_customer = await make_user(inst.ctx, "customer")
    expired_customer = await make_user(inst.ctx, "customer")
    [mitra] = await online_mitras(inst, 1)
    matched = await open_ok(inst, matched_customer)
    expired = await open_ok(inst, expired_customer, mitra_id=None)
    assert (await accept(inst, mitra, matched["id"])).status_code == 200
    inst.clock.advance(31)
    await run_due_timers(inst.ctx, inst.clock.now())

    for customer, request, status in (
        (matched_customer, matched, "matched"),
        (expired_customer, expired, "expired"),
    ):
        r = await cancel(inst, customer, request["id"])
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "invalid_state"
        assert status in r.json()["detail"]
        current = (await get_request(inst, customer, request["id"])).json()["pairing_request"]
        assert current["status"] == status


async def test_a_request_is_visible_and_cancellable_by_its_customer_only(
    inst: Instance,
) -> None:
    owner = await make_user(inst.ctx, "customer")
    stranger = await make_user(inst.ctx, "customer")
    await online_mitras(inst, 1)
    request = await open_ok(inst, owner)

    for r in (
        await get_request(inst, stranger, request["id"]),
        await cancel(inst, stranger, request["id"]),
    ):
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found"
    own = await get_request(inst, owner, request["id"])
    assert own.status_code == 200, own.text
    body = own.json()["pairing_request"]
    assert body == {**request, "status": "searching"} | {
        "offered_to": sorted(request["offered_to"])
    }
