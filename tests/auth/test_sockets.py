"""Sockets end with their login (SPEC §6, auth/sockets.py), on one real server: a logout
closes that login's sockets and no other login's, a deactivation every socket of the
mitra; a revoked login's token is refused at connect with the same reason; and the
periodic re-check ends a socket whose login was revoked without a push."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from halobestie.auth.actions import do_open_session
from halobestie.auth.sockets import recheck_logins
from halobestie.events.bus import bus
from tests.conftest import eventually
from tests.events.live import Live, LiveFactory, live_app_fixture, open_socket
from tests.factories import Person, make_user

__all__ = ["live_app_fixture"]

POLICY_VIOLATION = 1008


async def closed_with(ws: ClientConnection, within: float) -> tuple[int, str]:
    """(code, reason) of the server's close, which must come within `within` seconds."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    assert closed.value.rcvd is not None, "the server did not send a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def second_login(live: Live, person: Person) -> Person:
    login = await do_open_session(live.ctx, person.user, live.ctx.clock.now())
    return Person(person.user, login.access_token, login.refresh_token)


async def still_open(ws: ClientConnection) -> None:
    await ws.send('{"type": "ping"}')
    assert '"pong"' in await asyncio.wait_for(ws.recv(), 5)


async def test_logout_closes_that_logins_socket_and_not_the_other_logins(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        phone = await make_user(live.ctx, "customer")
        laptop = await second_login(live, phone)
        async with (
            open_socket(live, phone.token) as on_phone,
            open_socket(live, laptop.token) as on_laptop,
        ):
            r = await live.client.post("/api/auth/logout", headers=phone.headers)
            assert r.status_code == 204, r.text
            code, reason = await closed_with(on_phone, within=1.0)
            assert code == POLICY_VIOLATION
            assert reason.startswith("logged_out:")
            await still_open(on_laptop)
        await eventually(lambda: bus(live.ctx).connected(phone.id) == 0)


async def test_deactivation_closes_every_socket_of_the_mitra_and_refuses_reconnects(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        admin = await make_user(live.ctx, "admin")
        mitra = await make_user(live.ctx, "mitra")
        other = await second_login(live, mitra)
        async with open_socket(live, mitra.token) as one, open_socket(live, other.token) as two:
            r = await live.client.patch(
                f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
            )
            assert r.status_code == 200, r.text
            for ws in (one, two):
                code, reason = await closed_with(ws, within=1.0)
                assert (code, reason.split(":")[0]) == (POLICY_VIOLATION, "account_deactivated")
        # The same word at connect, and 403 on endpoints that check the login.
        async with connect(live.ws_url(mitra.token), open_timeout=10) as ws:
            code, reason = await closed_with(ws, within=5.0)
            assert (code, reason.split(":")[0]) == (POLICY_VIOLATION, "account_deactivated")
        r = await live.client.get("/api/mitra/offers", headers=mitra.headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "account_deactivated"
        r = await live.client.get("/api/mitra/status", headers=mitra.headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "mitra_deactivated"  # the status routes' word (SPEC §4)


async def test_the_recheck_ends_sockets_of_logins_revoked_without_a_push(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        person = await make_user(live.ctx, "customer")
        async with open_socket(live, person.token) as ws:
            # Revoked behind the instance's back (as another instance would, its push lost).
            async with live.ctx.db.connection() as conn:
                await conn.execute(
                    "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = 'logout'"
                    " WHERE user_id = $1",
                    person.id,
                )
            assert await recheck_logins(live.ctx) == 1
            code, reason = await closed_with(ws, within=5.0)
            assert (code, reason.split(":")[0]) == (POLICY_VIOLATION, "logged_out")
