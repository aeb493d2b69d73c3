"""Reroute: the session becomes `rerouted` and a new request is blasted to OTHER mitras,
in one transaction; when nobody else is available nothing changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from halobestie.timers import run_due_timers
from tests.conftest import AppFactory, Instance
from tests.sessions.helpers import (
    Cast,
    assert_capacity_mirrored,
    history,
    make_cast,
    make_pending_session,
    pay,
    post_webhook,
    session_status,
    timers,
    url,
    webhook_body,
)


@pytest.fixture
async def roomy(make_app: AppFactory) -> AsyncIterator[Instance]:
    """Mitras take two sessions, so the session's own mitra would still be available:
    only the exclusion keeps it out of the reroute."""
    async with make_app(MITRA_MAX_CONCURRENT_SESSIONS=2) as instance:
        yield instance


async def online(inst: Instance, *people: Any) -> None:
    for person in people:
        r = await inst.client.post("/api/mitra/status/online", headers=person.headers)
        assert r.status_code == 200, r.text


async def reroute(inst: Instance, cast: Cast, sid: Any) -> Any:
    return await inst.client.post(url(sid, "reroute"), headers=cast.customer.headers)


@pytest.mark.parametrize("paid", [False, True], ids=["pending_payment", "active"])
async def test_reroute_closes_the_session_and_blasts_other_mitras(
    roomy: Instance, pg: asyncpg.Connection, valkey: Any, paid: bool
) -> None:
    inst = roomy
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=40)
    if paid:
        await pay(inst, sid)
    await online(inst, cast.mitra, cast.other_mitra)

    r = await reroute(inst, cast, sid)
    assert r.status_code == 200, r.text
    request = r.json()["pairing_request"]
    assert request["status"] == "searching"
    assert request["offered_to"] == [str(cast.other_mitra.id)]
    assert request["duration_minutes"] == 40
    row: Any = await pg.fetchrow(
        "SELECT customer_id, rerouted_from FROM pairing_requests WHERE id = $1",
        UUID(request["id"]),
    )
    assert (row["customer_id"], row["rerouted_from"]) == (cast.customer.id, sid)

    assert await session_status(pg, sid) == "rerouted"
    before = "active" if paid else "pending_payment"
    assert (await history(pg, sid))[-1] == (
        before, "rerouted", cast.customer.id, "customer", "rerouted by the customer",
    )  # fmt: skip
    assert await timers(pg, sid) == {}
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 0
    r = await inst.client.get("/api/mitra/offers", headers=cast.other_mitra.headers)
    assert [o["request_id"] for o in r.json()["offers"]] == [request["id"]]
    r = await inst.client.get("/api/mitra/offers", headers=cast.mitra.headers)
    assert r.json()["offers"] == []

    # The old session is closed for good: no payment, no extension, no second reroute.
    assert (await post_webhook(inst, webhook_body(sid, "late"))).status_code == 409
    r = await inst.client.post(
        url(sid, "extend"), json={"minutes": 5}, headers=cast.customer.headers
    )
    assert r.status_code == 409 and r.json()["error"] == "invalid_state"
    r = await reroute(inst, cast, sid)
    assert r.status_code == 409 and r.json()["error"] == "invalid_state"
    assert await run_due_timers(inst.ctx, inst.clock.advance(86400)) >= 1  # offer expiry
    assert await session_status(pg, sid) == "rerouted"


async def test_reroute_with_nobody_else_available_is_409_and_changes_nothing(
    roomy: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    inst = roomy
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    await pay(inst, sid)
    await online(inst, cast.mitra)  # available (capacity 2), but it is this session's mitra
    before = (await history(pg, sid), await timers(pg, sid))

    r = await reroute(inst, cast, sid)
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "no_mitra_available"
    assert await session_status(pg, sid) == "active"
    assert (await history(pg, sid), await timers(pg, sid)) == before
    opened = "SELECT count(*) FROM pairing_requests WHERE rerouted_from = $1"
    assert await pg.fetchval(opened, sid) == 0
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 1


@pytest.mark.parametrize("status", ["cancelled", "expired", "ended", "rerouted"])
async def test_a_closed_session_cannot_be_rerouted(
    inst: Instance, pg: asyncpg.Connection, status: str
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    await pg.execute("UPDATE chat_sessions SET status = $2 WHERE id = $1", sid, status)
    await online(inst, cast.other_mitra)
    r = await reroute(inst, cast, sid)
    assert r.status_code == 409 and r.json()["error"] == "invalid_state", r.text
    assert status in r.json()["detail"]
    assert await pg.fetchval("SELECT count(*) FROM pairing_requests") == 1  # the factory's


async def test_only_the_sessions_customer_can_reroute(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    await online(inst, cast.other_mitra)
    for person, status in (
        (cast.mitra, 403), (cast.admin, 403), (cast.other_customer, 404),
    ):  # fmt: skip
        r = await inst.client.post(url(sid, "reroute"), headers=person.headers)
        assert r.status_code == status, r.text
    assert await session_status(pg, sid) == "pending_payment"


async def test_reroute_while_the_customer_already_searches_is_409_and_changes_nothing(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    await online(inst, cast.other_mitra)
    r = await inst.client.post(
        "/api/pairing/requests", json={"duration_minutes": 10}, headers=cast.customer.headers
    )
    assert r.status_code == 201, r.text
    r = await reroute(inst, cast, sid)
    assert r.status_code == 409 and r.json()["error"] == "invalid_state", r.text
    assert await session_status(pg, sid) == "pending_payment"
    assert set(await timers(pg, sid)) == {"payment_timeout"}
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 1


async def test_a_reroute_racing_the_accept_of_the_customers_other_search_never_deadlocks(
    roomy: Instance, pg: asyncpg.Connection
) -> None:
    """The reroute locks the customer's searching request before its transition locks the
    mitra's row, the order the accept takes them in: no 40P01 (a 500), whichever wins."""
    inst = roomy
    for _ in range(5):
        cast = await make_cast(inst)
        await online(inst, cast.mitra, cast.other_mitra)
        session_id = await make_pending_session(inst, cast.customer, cast.mitra)
        r = await inst.client.post(
            "/api/pairing/requests",
            json={"duration_minutes": 30, "mitra_id": str(cast.mitra.id)},
            headers=cast.customer.headers,
        )
        assert r.status_code == 201, r.text
        request_id = r.json()["pairing_request"]["id"]

        reroute, accept = await asyncio.gather(
            inst.client.post(url(session_id, "reroute"), headers=cast.customer.headers),
            inst.client.post(
                f"/api/pairing/requests/{request_id}/accept", headers=cast.mitra.headers
            ),
        )

        assert reroute.status_code in (200, 201, 409), reroute.text
        assert accept.status_code in (200, 409), accept.text
