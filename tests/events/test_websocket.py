"""GET /ws on a real server: who may connect, what a connected user receives, and how the
socket behaves towards a misbehaving or slow client."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from uuid import uuid4

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from halobestie.auth.tokens import Principal, issue_access_token
from halobestie.clock import ManualClock
from halobestie.events.bus import bus
from tests.conftest import Servers, eventually
from tests.events.live import (
    Live,
    LiveFactory,
    next_event,
    nothing_pending,
    open_socket,
)
from tests.factories import make_user
from tests.failures.helpers import postgres_proxy_fixture, postgres_url_via
from tests.support.proxy import FaultProxy

__all__ = ["postgres_proxy_fixture"]

POLICY_VIOLATION = 1008


async def refusal(live: Live, token: str | None) -> tuple[int, str]:
    """Connect and return the close (code, reason); fails if any event was sent first."""
    async with connect(live.ws_url(token), open_timeout=10, close_timeout=2) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            event = await asyncio.wait_for(ws.recv(), 10)
            raise AssertionError(f"a refused socket received {event!r}")
    rcvd = closed.value.rcvd
    assert rcvd is not None, "the server dropped the socket without a close frame"
    return rcvd.code, rcvd.reason


# -- who may connect -------------------------------------------------------------------


async def test_socket_is_refused_without_a_token(live_app: LiveFactory) -> None:
    async with live_app() as live:
        code, reason = await refusal(live, None)
        assert (code, reason.split(":")[0]) == (POLICY_VIOLATION, "invalid_token")
        code, _ = await refusal(live, "")
        assert code == POLICY_VIOLATION


async def test_socket_is_refused_for_a_forged_or_garbage_token(live_app: LiveFactory) -> None:
    async with live_app() as live:
        person = await make_user(live.ctx, "customer")
        forged = issue_access_token(
            "another-secret-0123456789abcdef0123456789",
            Principal(person.id, uuid4(), "customer"),
            live.ctx.clock.now(),
            900,
        )
        for token in (forged, "not.a.jwt", person.refresh_token):
            code, reason = await refusal(live, token)
            assert code == POLICY_VIOLATION, token
            assert reason.startswith("invalid_token"), reason
        assert bus(live.ctx).connected(person.id) == 0


async def test_socket_is_refused_once_the_access_token_expired(live_app: LiveFactory) -> None:
    clock = ManualClock()
    async with live_app(clock=clock) as live:
        person = await make_user(live.ctx, "mitra")
        async with open_socket(live, person.token):
            pass  # valid now
        clock.advance(live.ctx.settings.access_token_ttl_seconds + 1)
        code, reason = await refusal(live, person.token)
        assert code == POLICY_VIOLATION
        assert "expired" in reason


async def test_socket_is_refused_after_logout_and_after_deactivation(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        customer = await make_user(live.ctx, "customer")
        r = await live.client.post("/api/auth/logout", headers=customer.headers)
        assert r.status_code == 204, r.text
        code, reason = await refusal(live, customer.token)
        assert (code, reason.split(":")[0]) == (POLICY_VIOLATION, "invalid_token")

        admin, mitra = await make_user(live.ctx, "admin"), await make_user(live.ctx, "mitra")
        r = await live.client.patch(
            f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
        )
        assert r.status_code == 200, r.text
        code, _ = await refusal(live, mitra.token)
        assert code == POLICY_VIOLATION


async def test_every_role_may_connect(live_app: LiveFactory) -> None:
    async with live_app() as live:
        for role in ("customer", "mitra", "admin"):
            person = await make_user(live.ctx, role)
            async with connect(live.ws_url(person.token), open_timeout=10) as ws:
                ready = await next_event(ws)
                assert ready == {
                    "type": "ready",
                    "data": {"user_id": str(person.id), "role": role, "last_seq": 0},
                }


async def test_socket_closes_when_its_access_token_expires(live_app: LiveFactory) -> None:
    async with live_app(ACCESS_TOKEN_TTL_SECONDS=1) as live:
        person = await make_user(live.ctx, "customer")
        async with open_socket(live, person.token) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # no event is sent; the server ends the stream itself
                    await asyncio.wait_for(ws.recv(), 30)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == POLICY_VIOLATION
        assert closed.value.rcvd.reason.startswith("token_expired")
        await eventually(lambda: bus(live.ctx).connected(person.id) == 0)


async def test_sockets_open_and_stay_open_while_postgres_is_down(
    live_app: LiveFactory, clean: Servers, postgres_proxy: FaultProxy
) -> None:
    """Revocation cannot be checked then; signature and expiry still are."""
    async with live_app(DATABASE_URL=postgres_url_via(clean, postgres_proxy)) as live:
        before = await make_user(live.ctx, "customer")
        during = await make_user(live.ctx, "mitra")
        async with open_socket(live, before.token) as early:
            await postgres_proxy.cut()
            try:
                async with open_socket(live, during.token) as late:
                    await bus(live.ctx).publish([before.id, during.id], "session.updated", {})
                    assert (await next_event(early))["type"] == "session.updated"
                    assert (await next_event(late))["type"] == "session.updated"
                code, _ = await refusal(live, "not.a.jwt")
                assert code == POLICY_VIOLATION
            finally:
                await postgres_proxy.restore()


# -- what a connected user receives ----------------------------------------------------


async def test_events_reach_every_socket_of_their_users_and_no_one_else(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        ana, ben, eve = [await make_user(live.ctx, "customer") for _ in range(3)]
        async with (
            open_socket(live, ana.token) as ana_phone,
            open_socket(live, ana.token) as ana_laptop,
            open_socket(live, ben.token) as ben_ws,
            open_socket(live, eve.token) as eve_ws,
        ):
            assert bus(live.ctx).connected(ana.id) == 2
            await bus(live.ctx).publish([ana.id, ben.id], "session.updated", {"n": 1})
            for ws in (ana_phone, ana_laptop, ben_ws):
                assert await next_event(ws) == {"type": "session.updated", "data": {"n": 1}}
            assert await nothing_pending(eve_ws)


async def test_ping_gets_pong_and_garbage_gets_an_error_without_closing(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        person = await make_user(live.ctx, "mitra")
        async with open_socket(live, person.token) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert await next_event(ws) == {"type": "pong", "data": {}}
            for garbage in ("hello", "[1, 2]", '{"type": "subscribe"}', "{"):
                await ws.send(garbage)
                error = await next_event(ws)
                assert error["type"] == "error", garbage
                assert error["data"]["error"] == "invalid_message"
            # still open, still delivering
            await bus(live.ctx).publish([person.id], "pairing.offer", {"request_id": "r"})
            assert (await next_event(ws))["type"] == "pairing.offer"
            await ws.send(json.dumps({"type": "ping"}))
            assert (await next_event(ws))["type"] == "pong"


@pytest.mark.parametrize(
    ("frame", "code"),
    [(b"\x00\x01binary", 1003), ("x" * 10_000, 1009)],
    ids=["binary", "oversized"],
)
async def test_binary_or_oversized_frames_close_the_socket(
    live_app: LiveFactory, frame: str | bytes, code: int
) -> None:
    async with live_app() as live:
        person = await make_user(live.ctx, "customer")
        async with open_socket(live, person.token) as ws:
            await ws.send(frame)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == code
        await eventually(lambda: bus(live.ctx).connected(person.id) == 0)


async def test_a_closed_socket_is_detached_from_the_bus(live_app: LiveFactory) -> None:
    async with live_app() as live:
        person = await make_user(live.ctx, "customer")
        async with open_socket(live, person.token):
            assert bus(live.ctx).connected(person.id) == 1
        await eventually(lambda: bus(live.ctx).connected(person.id) == 0)
        # publishing to a user with no socket is fine
        await bus(live.ctx).publish([person.id], "session.updated", {})


async def test_a_client_that_stops_reading_is_cut_off_without_stalling_others(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        stuck, other = await make_user(live.ctx, "customer"), await make_user(live.ctx, "mitra")
        # Random, so permessage-deflate cannot shrink it to nothing.
        big = {"blob": secrets.token_urlsafe(32_000)}
        # A small receive buffer, max_queue=1 and no reads: TCP backpressure reaches the
        # server after a few MB instead of after the kernel's autotuned tens of MB.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
        sock.connect(("127.0.0.1", live.port))
        async with (
            connect(live.ws_url(stuck.token), sock=sock, open_timeout=10, max_queue=1) as stuck_ws,
            open_socket(live, other.token) as other_ws,
        ):
            await eventually(lambda: bus(live.ctx).connected(stuck.id) == 1)
            for _ in range(2000):
                # would hang here if one slow socket could block publishing
                await asyncio.wait_for(
                    bus(live.ctx).publish([stuck.id], "session.updated", big), 10
                )
                if bus(live.ctx).connected(stuck.id) == 0:
                    break
            assert bus(live.ctx).connected(stuck.id) == 0, "never cut off"
            await bus(live.ctx).publish([other.id], "pairing.offer", {})
            assert (await next_event(other_ws))["type"] == "pairing.offer"
            # the stuck client, once it reads again, finds a close telling it to reconnect
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(stuck_ws.recv(), 30)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
