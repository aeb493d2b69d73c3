"""`typing` from a client's socket reaches the other party: never stored, at most one a
second per sender, only from a party of an active session. Real sockets on a real server.

A dropped frame is silent, so the tests prove a drop by order: the sender's `ping` is
answered only after its earlier frames were handled (a relay is queued to the other
socket before the `pong` to this one), and then a marker event (a message) is sent; the
other party's next event after that must be the marker, not a `typing`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from websockets.asyncio.client import ClientConnection

from halobestie.clock import ManualClock
from tests.chat.helpers import make_active_session, sent
from tests.conftest import Instance
from tests.events.live import Live, LiveFactory, next_event, next_event_of, open_socket
from tests.factories import Person
from tests.sessions.helpers import make_cast, make_pending_session


@asynccontextmanager
async def served(live_app: LiveFactory) -> AsyncIterator[tuple[Live, Instance]]:
    clock = ManualClock()
    async with live_app(clock=clock) as live:
        yield live, Instance(live.app, live.client, live.ctx, clock)


async def typing(ws: ClientConnection, session_id: Any) -> None:
    await ws.send(json.dumps({"type": "typing", "data": {"session_id": str(session_id)}}))


async def handled(ws: ClientConnection) -> None:
    """Every frame this socket sent before is handled once this returns."""
    await ws.send(json.dumps({"type": "ping"}))
    assert (await next_event_of(ws, "pong"))["type"] == "pong"


async def marker(inst: Instance, sender: Person, session_id: Any, other: ClientConnection) -> None:
    """A message from `sender`: `other`'s next event must be its `message.created`."""
    await sent(inst, sender, session_id, "marker", f"marker-{id(other)}-{inst.clock.now()}")
    event = await next_event(other)
    assert event["type"] == "message.created", event


async def test_typing_reaches_the_other_party_only_and_is_never_stored(
    live_app: LiveFactory, pg: asyncpg.Connection
) -> None:
    async with served(live_app) as (live, inst):
        cast = await make_cast(inst)
        sid = await make_active_session(inst, cast.customer, cast.mitra)
        async with (
            open_socket(live, cast.customer.token) as customer,
            open_socket(live, cast.mitra.token) as mitra,
        ):
            await typing(customer, sid)
            event = await next_event(mitra)
            assert event == {
                "type": "typing",
                "data": {"session_id": str(sid), "user_id": str(cast.customer.id)},
            }
            await handled(customer)
            await marker(inst, cast.mitra, sid, customer)  # the sender got no typing back
            inst.clock.advance(1)
            await typing(mitra, sid)
            event = await next_event_of(customer, "typing")
            assert event["data"]["user_id"] == str(cast.mitra.id)
        assert await pg.fetchval("SELECT count(*) FROM chat_messages") == 1  # the marker


async def test_typing_is_relayed_at_most_once_a_second_per_sender(
    live_app: LiveFactory,
) -> None:
    async with served(live_app) as (live, inst):
        cast = await make_cast(inst)
        sid = await make_active_session(inst, cast.customer, cast.mitra)
        async with (
            open_socket(live, cast.customer.token) as customer,
            open_socket(live, cast.mitra.token) as mitra,
        ):
            await typing(customer, sid)
            assert (await next_event(mitra))["type"] == "typing"
            inst.clock.advance(0.9)
            await typing(customer, sid)  # within the second: dropped
            await handled(customer)
            await marker(inst, cast.customer, sid, mitra)
            await next_event_of(customer, "message.created")
            inst.clock.advance(0.1)
            await typing(customer, sid)  # a second after the last relayed one
            assert (await next_event(mitra))["type"] == "typing"


async def test_typing_is_dropped_unless_a_party_of_an_active_session_sends_it(
    live_app: LiveFactory,
) -> None:
    async with served(live_app) as (live, inst):
        cast = await make_cast(inst)
        sid = await make_active_session(inst, cast.customer, cast.mitra)
        pending = await make_pending_session(inst, cast.other_customer, cast.mitra)
        async with (
            open_socket(live, cast.customer.token) as customer,
            open_socket(live, cast.mitra.token) as mitra,
            open_socket(live, cast.other_mitra.token) as stranger,
            open_socket(live, cast.other_customer.token) as waiting,
            open_socket(live, cast.admin.token) as admin,
        ):
            for ws in (stranger, admin):  # not a party
                await typing(ws, sid)
                await handled(ws)
            await typing(mitra, pending)  # a party, but the session is not active
            await handled(mitra)
            await marker(inst, cast.mitra, sid, customer)
            await next_event_of(mitra, "message.created")
            inst.clock.advance(1)
            await sent(inst, cast.customer, sid, "for the marker", "c-x")
            await typing(mitra, sid)  # the mitra's gate was not spent by the refused frame
            assert (await next_event_of(customer, "typing"))["data"]["session_id"] == str(sid)
            r = await inst.client.post(f"/api/sessions/{pending}/end", headers=cast.mitra.headers)
            assert r.status_code == 200
            assert (await next_event(waiting))["type"] == "session.updated"  # nothing before


async def test_a_malformed_typing_frame_gets_an_error_event(live_app: LiveFactory) -> None:
    async with served(live_app) as (live, inst):
        person = await make_cast(inst)
        async with open_socket(live, person.customer.token) as ws:
            for data in (None, {}, {"session_id": 7}, {"session_id": "not-a-uuid"}):
                await ws.send(json.dumps({"type": "typing", "data": data}))
                event = await next_event(ws)
                assert event["type"] == "error", event
                assert event["data"]["error"] == "invalid_message"
                assert "session_id" in event["data"]["detail"]
