"""SPEC §6 across instances: a user's events, produced through two instances, reach a
client that keeps dropping and reopening its socket (on either instance, with `since` =
the last seq it saw) exactly as 1..n; and a socket on one instance gets every event
committed on the other exactly once through a Valkey outage."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import asyncpg
import httpx
from websockets.asyncio.client import connect

from halobestie.aftercommit import run_after_commit
from halobestie.clock import ManualClock
from halobestie.context import Context
from halobestie.events.announce import announce, record_effects
from halobestie.events.bus import bus
from tests.chat.helpers import make_active_session, send
from tests.conftest import Instance, Servers, eventually
from tests.events.live import Live, LiveFactory, next_event, nothing_pending
from tests.factories import Person, make_user
from tests.failures.helpers import valkey_proxy_fixture, valkey_url_via
from tests.multi.processes import serve_process
from tests.support.proxy import FaultProxy

__all__ = ["valkey_proxy_fixture"]

PER_PARTY = 40


async def subscribed(*lives: Live) -> None:
    await eventually(lambda: all(bus(live.ctx).subscribed for live in lives), within=15)


async def last_seq(pg: asyncpg.Connection, user_id: UUID) -> int:
    return int(
        await pg.fetchval("SELECT last_seq FROM event_cursors WHERE user_id = $1", user_id) or 0
    )


@dataclass
class Door:
    """One instance as a client sees it: its HTTP client and its socket address."""

    client: httpx.AsyncClient
    ws_base: str


async def drop_and_reopen(
    doors: tuple[Door, Door], pg: asyncpg.Connection, customer: Person, mitra: Person, sid: UUID
) -> None:
    """The customer sends through one instance and the mitra through the other (the
    customer's message.created events are committed and delivered by both), while the
    customer's client reads a few frames on one instance, kills its socket, and reopens
    it on the other with `since` = the last seq it saw. It must see exactly 1..n."""
    a, b = doors

    async def talk(door: Door, person: Person) -> None:
        who = person.user.role
        for n in range(PER_PARTY):
            r = await send(door.client, person, sid, f"{who} {n}", f"{who}-{n}")
            assert r.status_code == 201, r.text
            await asyncio.sleep(random.uniform(0, 0.01))

    producers = asyncio.gather(talk(a, customer), talk(b, mitra))
    received: list[int] = []
    rng = random.Random(11)
    reconnects = 0
    try:
        while True:
            done = producers.done()
            target = await last_seq(pg, customer.id) if done else None
            if target is not None and received and received[-1] == target:
                break
            since = received[-1] if received else 0
            url = f"{doors[reconnects % 2].ws_base}?token={customer.token}&since={since}"
            ws = await connect(url, open_timeout=10)
            reconnects += 1
            try:
                ready = await next_event(ws)
                assert ready["type"] == "ready", ready
                for _ in range(rng.randint(1, 12)):
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except TimeoutError:
                        break
                    assert "seq" in frame, frame
                    received.append(frame["seq"])
            finally:
                # Killed, not closed: the TCP connection drops without a close frame.
                assert ws.transport is not None
                ws.transport.abort()
            assert reconnects < 2000, "the stream never caught up"
    finally:
        await producers
    n = await last_seq(pg, customer.id)
    assert n == 2 + 2 * PER_PARTY  # session.updated twice (pending, active), messages
    assert received == list(range(1, n + 1))
    assert reconnects >= 10


async def test_a_client_dropping_its_socket_on_two_instances_receives_exactly_1_to_n(
    live_app: LiveFactory, pg: asyncpg.Connection
) -> None:
    clock = ManualClock()
    async with live_app(clock=clock) as a, live_app(clock=clock) as b:
        await subscribed(a, b)
        customer, mitra = await make_user(a.ctx, "customer"), await make_user(a.ctx, "mitra")
        sid = await make_active_session(Instance(a.app, a.client, a.ctx, clock), customer, mitra)
        doors = (Door(a.client, a.ws_url(None)), Door(b.client, b.ws_url(None)))
        await drop_and_reopen(doors, pg, customer, mitra, sid)


async def test_the_same_with_two_serve_processes(
    inst: Instance, clean: Servers, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Two `halobestie serve` processes (each its own event loop, bus and subscriber)."""
    customer, mitra = await make_user(inst.ctx, "customer"), await make_user(inst.ctx, "mitra")
    sid = await make_active_session(inst, customer, mitra)
    async with (
        serve_process(clean, tmp_path, "a") as a,
        serve_process(clean, tmp_path, "b") as b,
    ):
        await a.wait_serving()
        await b.wait_serving()
        async with (
            httpx.AsyncClient(base_url=a.url, timeout=10) as on_a,
            httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
        ):
            # Let both subscribers subscribe (an instance not yet subscribed would still
            # deliver, from Postgres: its catch-up polls every second until it is).
            await asyncio.sleep(0.5)
            doors = (
                Door(on_a, f"ws://127.0.0.1:{a.port}/ws"),
                Door(on_b, f"ws://127.0.0.1:{b.port}/ws"),
            )
            await drop_and_reopen(doors, pg, customer, mitra, sid)


async def commit_on(ctx: Context, user_id: UUID, n: int) -> None:
    for i in range(n):
        effect = announce(ctx, [user_id], "pairing.offer", {"request_id": f"r{i}"})
        async with ctx.db.transaction() as conn:
            await record_effects(conn, ctx.clock.now(), [effect])
        await run_after_commit(ctx, [effect])


async def test_a_valkey_outage_loses_no_event_and_repeats_none(
    live_app: LiveFactory, clean: Servers, valkey_proxy: FaultProxy
) -> None:
    """Events committed on A for a socket on B while Valkey is down (pub/sub loses them)
    and after it is back: B's socket gets each once, in order (B catches up from
    Postgres when it subscribes again, and polls while it cannot)."""
    url = valkey_url_via(clean, valkey_proxy)
    async with live_app(VALKEY_URL=url) as a, live_app(VALKEY_URL=url) as b:
        try:
            await subscribed(a, b)
            user = await make_user(a.ctx, "mitra")
            async with connect(f"{b.ws_url(user.token)}&since=0", open_timeout=10) as ws:
                assert (await next_event(ws))["data"]["last_seq"] == 0
                await commit_on(a.ctx, user.id, 3)
                await valkey_proxy.cut()
                await eventually(lambda: not bus(b.ctx).subscribed, within=15)
                await commit_on(a.ctx, user.id, 10)  # PUBLISHes fail or are skipped
                await valkey_proxy.restore()
                await subscribed(a, b)
                await eventually(lambda: a.ctx.mirror.reachable, within=15)
                await commit_on(a.ctx, user.id, 5)
                got: list[int] = []
                while len(got) < 18:
                    frame = await next_event(ws, within=15)
                    got.append(frame["seq"])
                assert got == list(range(1, 19))
                assert await nothing_pending(ws, 1.0)
                assert bus(b.ctx).catch_ups >= 1
        finally:
            await valkey_proxy.restore()
