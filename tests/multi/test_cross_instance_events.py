"""Two instances on one Postgres and one Valkey, each a real uvicorn server: events reach a
user whichever instance their socket is on, and a Valkey outage degrades delivery to
"same instance only" without closing anyone's socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from websockets.asyncio.client import ClientConnection

from halobestie.events.bus import bus
from tests.conftest import Servers, eventually
from tests.events.live import Live, LiveFactory, next_event, next_event_of, nothing_pending
from tests.events.live import open_socket as socket_on
from tests.factories import make_user
from tests.failures.helpers import valkey_proxy_fixture, valkey_url_via
from tests.support.proxy import FaultProxy

__all__ = ["valkey_proxy_fixture"]


async def subscribed(*lives: Live) -> None:
    """Each instance's subscriber has confirmed its SUBSCRIBE (events published from now
    on reach it)."""
    await eventually(lambda: all(bus(live.ctx).subscribed for live in lives), within=15)


async def ping(ws: ClientConnection) -> None:
    """The socket is open and served: a ping gets its pong."""
    await ws.send(json.dumps({"type": "ping"}))
    assert (await next_event_of(ws, "pong"))["type"] == "pong"


@pytest.fixture
async def two(live_app: LiveFactory) -> AsyncIterator[tuple[Live, Live]]:
    async with live_app() as a, live_app() as b:
        await subscribed(a, b)
        yield a, b


async def test_event_published_on_one_instance_reaches_a_socket_on_the_other(
    two: tuple[Live, Live],
) -> None:
    a, b = two
    user = await make_user(a.ctx, "customer")
    async with socket_on(a, user.token) as on_a, socket_on(b, user.token) as on_b:
        await bus(a.ctx).publish([user.id], "session.updated", {"from": "a"})
        await bus(b.ctx).publish([user.id], "session.updated", {"from": "b"})
        # each socket gets both, exactly once: the publisher's own echo is skipped
        for ws in (on_a, on_b):
            got = [await next_event(ws), await next_event(ws)]
            assert sorted(e["data"]["from"] for e in got) == ["a", "b"]
            assert await nothing_pending(ws)


async def test_pairing_offer_and_accept_reach_users_connected_to_the_other_instance(
    two: tuple[Live, Live],
) -> None:
    """The real flow: the mitra is connected to B, the customer asks on A; the mitra
    accepts on B, and the customer's socket on A learns of the session."""
    a, b = two
    mitra, customer = await make_user(a.ctx, "mitra"), await make_user(a.ctx, "customer")
    r = await b.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    async with socket_on(b, mitra.token) as mitra_ws, socket_on(a, customer.token) as cust_ws:
        r = await a.client.post(
            "/api/pairing/requests", json={"duration_minutes": 30}, headers=customer.headers
        )
        assert r.status_code == 201, r.text
        request_id = r.json()["pairing_request"]["id"]
        offer = await next_event_of(mitra_ws, "pairing.offer")
        assert offer["data"]["request_id"] == request_id

        r = await b.client.post(f"/api/pairing/requests/{request_id}/accept", headers=mitra.headers)
        assert r.status_code == 200, r.text
        session = r.json()["session"]
        update = await next_event_of(cust_ws, "session.updated")
        assert update["data"]["session"]["id"] == session["id"]
        assert update["data"]["session"]["status"] == "pending_payment"


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
async def test_valkey_outage_keeps_sockets_open_and_local_delivery_then_heals(
    live_app: LiveFactory,
    clean: Servers,
    valkey_proxy: FaultProxy,
    fault: Literal["cut", "blackhole"],
) -> None:
    url = valkey_url_via(clean, valkey_proxy)
    async with live_app(VALKEY_URL=url) as a, live_app(VALKEY_URL=url) as b:
        try:
            await subscribed(a, b)
            user = await make_user(a.ctx, "mitra")
            async with socket_on(a, user.token) as on_a, socket_on(b, user.token) as on_b:
                await (valkey_proxy.cut() if fault == "cut" else valkey_proxy.blackhole())
                await eventually(lambda: not bus(b.ctx).subscribed, within=15)

                # sockets stay open and served; same-instance delivery still works
                await bus(a.ctx).publish([user.id], "pairing.offer", {"n": 1})
                assert await next_event(on_a) == {"type": "pairing.offer", "data": {"n": 1}}
                await ping(on_a)
                await ping(on_b)
                new_user = await make_user(a.ctx, "customer")
                async with socket_on(b, new_user.token):  # even new sockets open
                    pass

                await valkey_proxy.restore()
                await subscribed(a, b)
                await eventually(lambda: a.ctx.mirror.reachable, within=15)
                # the same sockets, never reconnected, get cross-instance events again
                await bus(a.ctx).publish([user.id], "session.updated", {"n": 2})
                assert (await next_event_of(on_b, "session.updated"))["data"] == {"n": 2}
                assert (await next_event_of(on_a, "session.updated"))["data"] == {"n": 2}
                assert bus(b.ctx).reconnects >= 1
        finally:
            await valkey_proxy.restore()
