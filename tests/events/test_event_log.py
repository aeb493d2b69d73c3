"""The event log (SPEC §6) on the real servers: events numbered per user 1..n in the
transaction of their change, replayed after `since` with an exact seam, holes filled from
Postgres, `resync_required` / 410 past retention, the REST stream and its 422s."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from halobestie.aftercommit import run_after_commit
from halobestie.clock import ManualClock
from halobestie.context import Context
from halobestie.events.announce import Announce, announce, record_effects
from halobestie.events.bus import bus
from halobestie.events.log import record
from halobestie.events.retention import run_event_retention
from halobestie.timers import run_due_timers
from tests.chat.helpers import make_active_session, send
from tests.conftest import Instance, Servers
from tests.events.live import Live, LiveFactory, next_event, nothing_pending, open_socket
from tests.factories import make_user
from tests.failures.helpers import postgres_proxy_fixture, postgres_url_via
from tests.sessions.helpers import make_pending_session
from tests.support.proxy import FaultProxy

__all__ = ["postgres_proxy_fixture"]

TRY_AGAIN_LATER = 1013


async def commit_events(
    ctx: Context, users: list[UUID], n: int = 1, *, deliver: bool = True
) -> list[Announce]:
    """`n` events for these users, each recorded in a transaction of its own and (unless
    `deliver` is False: a delivery lost on its way) delivered after its commit."""
    effects = []
    for i in range(n):
        effect = announce(ctx, users, "pairing.offer", {"request_id": f"r{i}"})
        async with ctx.db.transaction() as conn:
            await record_effects(conn, ctx.clock.now(), [effect])
        if deliver:
            await run_after_commit(ctx, [effect])
        effects.append(effect)
    return effects


def ws_url(live: Live, token: str, since: int | str | None = None) -> str:
    return live.ws_url(token) + ("" if since is None else f"&since={since}")


async def seqs_until(ws: ClientConnection, last: int, within: float = 20.0) -> list[int]:
    """The seqs of the frames received until `last` (other frames must not come)."""
    got: list[int] = []
    while not got or got[-1] < last:
        frame = await next_event(ws, within)
        assert "seq" in frame, frame
        got.append(frame["seq"])
    return got


# -- recording ---------------------------------------------------------------------------


async def test_each_user_numbers_its_events_one_to_n(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    ana, ben = await make_user(inst.ctx, "customer"), await make_user(inst.ctx, "mitra")
    await commit_events(inst.ctx, [ana.id, ben.id], 3)
    await commit_events(inst.ctx, [ben.id], 2)
    async with inst.ctx.db.transaction() as conn:  # several events in one transaction
        recorded = await record(
            conn,
            inst.clock.now(),
            [([ana.id], "a", {}), ([ana.id, ben.id, ana.id], "b", {"k": 1})],
        )
    # event by event; within one event, recipients in uuid order
    assert recorded[0].type == "a" and {r.type for r in recorded[1:]} == {"b"}
    assert {(r.user_id == ana.id, r.seq, r.type) for r in recorded} == {
        (True, 4, "a"),
        (True, 5, "b"),
        (False, 6, "b"),
    }
    rows = await pg.fetch("SELECT user_id, seq FROM events ORDER BY user_id, seq")
    assert [r["seq"] for r in rows if r["user_id"] == ana.id] == [1, 2, 3, 4, 5]
    assert [r["seq"] for r in rows if r["user_id"] == ben.id] == [1, 2, 3, 4, 5, 6]
    rows = await pg.fetch("SELECT user_id, last_seq FROM event_cursors")
    cursors = {r["user_id"]: r["last_seq"] for r in rows}
    assert cursors == {ana.id: 5, ben.id: 6}


async def test_a_rolled_back_change_records_nothing_and_gives_its_numbers_back(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    ana = await make_user(inst.ctx, "customer")
    await commit_events(inst.ctx, [ana.id])
    with pytest.raises(RuntimeError, match="the change failed"):
        async with inst.ctx.db.transaction() as conn:
            await record(conn, inst.clock.now(), [([ana.id], "lost", {})])
            raise RuntimeError("the change failed")
    await commit_events(inst.ctx, [ana.id])
    rows = await pg.fetch("SELECT seq, type FROM events WHERE user_id = $1 ORDER BY seq", ana.id)
    assert [(r["seq"], r["type"]) for r in rows] == [(1, "pairing.offer"), (2, "pairing.offer")]


async def test_concurrent_recorders_of_overlapping_users_neither_deadlock_nor_gap(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """Pairing blasts offering to the same mitras in different orders, at once."""
    mitras = [await make_user(inst.ctx, "mitra") for _ in range(5)]
    ids = [m.id for m in mitras]

    async def blast(k: int) -> None:
        order = ids[k % 5 :] + ids[: k % 5]  # every rotation: opposite orders meet
        async with inst.ctx.db.transaction() as conn:
            await conn.execute("SELECT pg_sleep(0.01)")
            await record(conn, inst.clock.now(), [(order[: 2 + k % 4], "pairing.offer", {})])

    await asyncio.gather(*(blast(k) for k in range(40)))
    for mitra in ids:
        seqs = [
            r["seq"] for r in await pg.fetch("SELECT seq FROM events WHERE user_id = $1", mitra)
        ]
        assert sorted(seqs) == list(range(1, len(seqs) + 1))


async def test_a_real_change_records_its_events_with_its_seq_on_the_socket(
    live_app: LiveFactory,
) -> None:
    """A chat message: message.created to both parties, each with its own seq."""
    clock = ManualClock()
    async with live_app(clock=clock) as live:
        customer, mitra = await make_user(live.ctx, "customer"), await make_user(live.ctx, "mitra")
        inst = Instance(live.app, live.client, live.ctx, clock)
        sid = await make_active_session(inst, customer, mitra)
        async with open_socket(live, customer.token) as ws:
            r = await send(live.client, mitra, sid, "hello", "m-1")
            assert r.status_code == 201, r.text
            frame = await next_event(ws)
            assert (
                frame["type"] == "message.created" and frame["data"]["message"]["body"] == "hello"
            )
            # session.updated twice (pending, active) came first
            assert frame["seq"] == 3 and list(frame) == ["type", "seq", "data"]


async def test_a_timer_records_its_events_in_the_firing_transaction(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """The payment timeout cancels the session: session.updated recorded for both parties
    by the runtime's `recording` wrapper (not only delivered)."""
    customer, mitra = await make_user(inst.ctx, "customer"), await make_user(inst.ctx, "mitra")
    sid = await make_pending_session(inst, customer, mitra)
    timeout = inst.ctx.settings.payment_timeout_seconds
    assert await run_due_timers(inst.ctx, inst.clock.advance(timeout)) == 1
    rows = await pg.fetch(
        "SELECT user_id, seq, data FROM events WHERE type = 'session.updated' ORDER BY seq"
    )
    last = {r["user_id"]: (r["seq"], json.loads(r["data"])) for r in rows}
    assert set(last) == {customer.id, mitra.id}
    for seq, data in last.values():
        assert seq == 2 and data["session"]["id"] == str(sid)
        assert data["session"]["status"] == "cancelled"


# -- the socket: since, holes, catch-up --------------------------------------------------


async def test_since_replays_what_was_missed_then_continues_live(live_app: LiveFactory) -> None:
    async with live_app() as live:
        ana = await make_user(live.ctx, "customer")
        await commit_events(live.ctx, [ana.id], 5)
        async with connect(ws_url(live, ana.token, since=2), open_timeout=10) as ws:
            ready = await next_event(ws)
            assert ready == {
                "type": "ready",
                "data": {"user_id": str(ana.id), "role": "customer", "last_seq": 5},
            }
            assert await seqs_until(ws, 5) == [3, 4, 5]
            await commit_events(live.ctx, [ana.id])
            frame = await next_event(ws)
            assert frame == {"type": "pairing.offer", "seq": 6, "data": {"request_id": "r0"}}
            assert await nothing_pending(ws)
        async with connect(ws_url(live, ana.token, since=6), open_timeout=10) as ws:
            assert (await next_event(ws))["data"]["last_seq"] == 6
            assert await nothing_pending(ws)  # up to date: nothing replayed
        async with open_socket(live, ana.token) as ws:  # without since: live only
            assert await nothing_pending(ws)


async def test_the_seam_is_exact_while_events_are_being_committed(live_app: LiveFactory) -> None:
    """Connect with since while another task commits events for the user: every seq
    after since arrives once, in order, across the replay and the live stream."""
    async with live_app() as live:
        ana = await make_user(live.ctx, "customer")
        await commit_events(live.ctx, [ana.id], 10)
        producing = asyncio.create_task(commit_events(live.ctx, [ana.id], 150))
        try:
            await asyncio.sleep(0.05)
            async with connect(ws_url(live, ana.token, since=4), open_timeout=10) as ws:
                assert (await next_event(ws))["type"] == "ready"
                await producing
                assert await seqs_until(ws, 160) == list(range(5, 161))
                assert await nothing_pending(ws)
        finally:
            await producing


async def test_a_long_replay_is_paged_without_overflowing_the_socket(
    live_app: LiveFactory, pg: asyncpg.Connection
) -> None:
    async with live_app() as live:
        ana = await make_user(live.ctx, "customer")
        async with live.ctx.db.transaction() as conn:  # 1200 events, quickly
            for _ in range(12):
                await record(
                    conn,
                    live.clock.now(),
                    [([ana.id], "pairing.offer", {"i": i}) for i in range(100)],
                )
        async with connect(ws_url(live, ana.token, since=0), open_timeout=10) as ws:
            assert (await next_event(ws))["data"]["last_seq"] == 1200
            assert await seqs_until(ws, 1200) == list(range(1, 1201))


async def test_a_hole_is_filled_from_postgres_and_a_duplicate_dropped(
    live_app: LiveFactory,
) -> None:
    async with live_app() as live:
        ana = await make_user(live.ctx, "mitra")
        async with open_socket(live, ana.token) as ws:
            lost = await commit_events(live.ctx, [ana.id], 2, deliver=False)  # seqs 1, 2
            await commit_events(live.ctx, [ana.id])  # seq 3 arrives first: 1, 2 are read
            assert await seqs_until(ws, 3) == [1, 2, 3]
            await run_after_commit(live.ctx, lost)  # late deliveries: duplicates
            assert await nothing_pending(ws)
        registry = live.ctx.metrics.registry
        reads = registry.get_sample_value("halobestie_event_log_reads_total", {"reason": "hole"})
        assert reads == 1


async def test_the_bus_catch_up_delivers_what_pub_sub_lost(live_app: LiveFactory) -> None:
    async with live_app() as live:
        ana = await make_user(live.ctx, "mitra")
        async with open_socket(live, ana.token) as ws:
            await commit_events(live.ctx, [ana.id], 2, deliver=False)
            assert await nothing_pending(ws)  # nothing after it to reveal the hole
            assert await bus(live.ctx).catch_up() == 1
            assert await seqs_until(ws, 2) == [1, 2]


# -- retention ---------------------------------------------------------------------------


async def test_past_retention_the_socket_resyncs_and_rest_answers_410(
    live_app: LiveFactory, pg: asyncpg.Connection
) -> None:
    clock = ManualClock()
    async with live_app(clock=clock, EVENT_RETENTION_SECONDS=60) as live:
        ana = await make_user(live.ctx, "customer")
        await commit_events(live.ctx, [ana.id], 3)
        clock.advance(30)
        await commit_events(live.ctx, [ana.id], 2)  # seqs 4, 5
        clock.advance(31)
        assert await run_event_retention(live.ctx, clock.now()) == 3
        assert await pg.fetchval("SELECT min(seq) FROM events WHERE user_id = $1", ana.id) == 4

        for since in (0, 2):  # events after since are gone: resync, then live from 5
            async with connect(ws_url(live, ana.token, since=since), open_timeout=10) as ws:
                assert (await next_event(ws))["data"]["last_seq"] == 5
                assert await next_event(ws) == {
                    "type": "resync_required",
                    "data": {"last_seq": 5},
                }
                assert await nothing_pending(ws)
        async with connect(ws_url(live, ana.token, since=3), open_timeout=10) as ws:
            assert (await next_event(ws))["type"] == "ready"  # 4 and 5 are kept
            assert await seqs_until(ws, 5) == [4, 5]
        async with connect(ws_url(live, ana.token, since=9), open_timeout=10) as ws:
            assert (await next_event(ws))["type"] == "ready"  # beyond the log: resync
            assert (await next_event(ws))["type"] == "resync_required"

        r = await live.client.get("/api/events", params={"after": 2}, headers=ana.headers)
        assert r.status_code == 410, r.text
        assert r.json()["error"] == "events_expired"
        r = await live.client.get("/api/events", params={"after": 3}, headers=ana.headers)
        assert r.status_code == 200 and [e["seq"] for e in r.json()["events"]] == [4, 5]
        # counters stay: numbering goes on
        await commit_events(live.ctx, [ana.id])
        assert (
            await pg.fetchval("SELECT last_seq FROM event_cursors WHERE user_id = $1", ana.id) == 6
        )


# -- REST --------------------------------------------------------------------------------


async def test_rest_pages_the_same_stream(inst: Instance) -> None:
    ana, ben = await make_user(inst.ctx, "customer"), await make_user(inst.ctx, "admin")
    await commit_events(inst.ctx, [ana.id], 7)
    pages: list[list[int]] = []
    after = 0
    while True:
        r = await inst.client.get(
            "/api/events", params={"after": after, "limit": 3}, headers=ana.headers
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert body["last_seq"] == 7
        if not body["events"]:
            break
        pages.append([e["seq"] for e in body["events"]])
        after = body["events"][-1]["seq"]
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    r = await inst.client.get("/api/events", headers=ana.headers)
    first = r.json()["events"][0]
    assert first["type"] == "pairing.offer" and first["data"] == {"request_id": "r0"}
    assert first["created_at"].endswith("Z") or "+00:00" in first["created_at"]
    r = await inst.client.get("/api/events", headers=ben.headers)  # any role, its own log
    assert r.status_code == 200 and r.json() == {"events": [], "last_seq": 0}


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 501}, {"limit": "x"}, {"after": -1}, {"after": "1.5"}],
    ids=["limit0", "limit501", "limit_text", "after_negative", "after_float"],
)
async def test_rest_refuses_malformed_paging(inst: Instance, params: dict[str, Any]) -> None:
    ana = await make_user(inst.ctx, "customer")
    r = await inst.client.get("/api/events", params=params, headers=ana.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    r = await inst.client.get("/api/events")
    assert r.status_code == 401


async def test_since_must_be_a_seq(live_app: LiveFactory) -> None:
    async with live_app() as live:
        ana = await make_user(live.ctx, "customer")
        for bad in ("-1", "x", "1.5"):
            async with connect(ws_url(live, ana.token, since=bad), open_timeout=10) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await next_event(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


# -- Postgres down -----------------------------------------------------------------------


async def test_postgres_down_rest_is_503_and_since_closes_clearly(
    live_app: LiveFactory, clean: Servers, postgres_proxy: FaultProxy
) -> None:
    async with live_app(DATABASE_URL=postgres_url_via(clean, postgres_proxy)) as live:
        ana = await make_user(live.ctx, "customer")
        await commit_events(live.ctx, [ana.id], 2)
        await postgres_proxy.cut()
        try:
            r = await live.client.get("/api/events", headers=ana.headers)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "database_unavailable"
            async with connect(ws_url(live, ana.token, since=0), open_timeout=10) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await next_event(ws)
            rcvd = closed.value.rcvd
            assert rcvd is not None and rcvd.code == TRY_AGAIN_LATER
            assert rcvd.reason.startswith("events_unavailable")
        finally:
            await postgres_proxy.restore()
        async with connect(ws_url(live, ana.token, since=0), open_timeout=10) as ws:
            assert (await next_event(ws))["data"]["last_seq"] == 2
            assert await seqs_until(ws, 2) == [1, 2]
