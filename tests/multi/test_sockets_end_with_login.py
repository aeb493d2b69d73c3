"""Sockets end with their login on whichever instance they are (SPEC §6): a logout or a
deactivation on one instance closes the sockets on the other within 1 s (pushed over the
event bus channel), and, with Valkey cut, within the login re-check's interval."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from halobestie.auth.actions import do_open_session
from halobestie.events.bus import bus
from tests.conftest import Servers, eventually
from tests.events.live import Live, LiveFactory
from tests.events.live import open_socket as socket_on
from tests.factories import Person, make_user
from tests.failures.helpers import valkey_proxy_fixture, valkey_url_via
from tests.multi.test_cross_instance_events import ping, subscribed
from tests.support.proxy import FaultProxy

__all__ = ["valkey_proxy_fixture"]

POLICY_VIOLATION = 1008
# Long enough that only the push can close a socket within a test's 1 s bound.
NO_RECHECK = "60"
RECHECK = 0.5


async def closed_with(ws: ClientConnection, within: float) -> str:
    """The reason's code of the server's 1008 close, which must come within `within` s."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    assert closed.value.rcvd is not None, "the server did not send a close frame"
    assert closed.value.rcvd.code == POLICY_VIOLATION, closed.value.rcvd
    return closed.value.rcvd.reason.split(":")[0]


async def second_login(live: Live, person: Person) -> Person:
    login = await do_open_session(live.ctx, person.user, live.ctx.clock.now())
    return Person(person.user, login.access_token, login.refresh_token)


async def deactivate(live: Live, admin: Person, mitra: Person) -> None:
    r = await live.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text


async def test_deactivation_closes_every_socket_of_the_mitra_on_both_instances_within_1s(
    live_app: LiveFactory,
) -> None:
    async with (
        live_app(WS_LOGIN_RECHECK_SECONDS=NO_RECHECK) as a,
        live_app(WS_LOGIN_RECHECK_SECONDS=NO_RECHECK) as b,
    ):
        await subscribed(a, b)
        admin, mitra = await make_user(a.ctx, "admin"), await make_user(a.ctx, "mitra")
        tablet = await second_login(a, mitra)
        async with (
            socket_on(a, mitra.token) as on_a,
            socket_on(b, mitra.token) as on_b,
            socket_on(b, tablet.token) as tablet_on_b,
        ):
            await deactivate(a, admin, mitra)
            reasons = await asyncio.gather(
                *(closed_with(ws, within=1.0) for ws in (on_a, on_b, tablet_on_b))
            )
            assert reasons == ["account_deactivated"] * 3
        await eventually(lambda: bus(b.ctx).connected(mitra.id) == 0)


async def test_logout_on_one_instance_closes_that_logins_socket_on_the_other_only(
    live_app: LiveFactory,
) -> None:
    async with (
        live_app(WS_LOGIN_RECHECK_SECONDS=NO_RECHECK) as a,
        live_app(WS_LOGIN_RECHECK_SECONDS=NO_RECHECK) as b,
    ):
        await subscribed(a, b)
        phone = await make_user(a.ctx, "customer")
        laptop = await second_login(a, phone)
        async with socket_on(b, phone.token) as phone_on_b, socket_on(b, laptop.token) as lap:
            r = await a.client.post("/api/auth/logout", headers=phone.headers)
            assert r.status_code == 204, r.text
            assert await closed_with(phone_on_b, within=1.0) == "logged_out"
            await ping(lap)


async def test_with_valkey_cut_the_recheck_closes_sockets_on_the_other_instance(
    live_app: LiveFactory, clean: Servers, valkey_proxy: FaultProxy
) -> None:
    url = valkey_url_via(clean, valkey_proxy)
    settings = {"VALKEY_URL": url, "WS_LOGIN_RECHECK_SECONDS": str(RECHECK)}
    async with live_app(**settings) as a, live_app(**settings) as b:
        try:
            await subscribed(a, b)
            admin, mitra = await make_user(a.ctx, "admin"), await make_user(a.ctx, "mitra")
            async with socket_on(a, mitra.token) as on_a, socket_on(b, mitra.token) as on_b:
                await valkey_proxy.cut()
                await eventually(lambda: not bus(b.ctx).subscribed, within=15)
                await deactivate(a, admin, mitra)
                # Local: at once. Remote: by b's next re-check (one interval, plus slack
                # for a loaded machine; the push is lost with Valkey cut).
                assert await closed_with(on_a, within=1.0) == "account_deactivated"
                assert await closed_with(on_b, within=RECHECK + 2.0) == "account_deactivated"
        finally:
            await valkey_proxy.restore()
