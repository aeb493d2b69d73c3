"""Auto-pipelining of the heartbeat's Lua call (valkey/autopipe.py): calls issued
in the same loop turn leave in one write, each caller gets its own reply, NOSCRIPT is
retried, a cancelled caller is skipped, a dead Valkey fails the whole batch (and the
heartbeat falls back to Postgres), and close() lets batches in flight finish.

Batches are counted on the wire (`WireSpy`): one write carrying n EVALSHAs is one batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import valkey.asyncio as valkey_async
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import ResponseError

from halobestie.availability.actions import HeartbeatResult, do_record_heartbeat
from halobestie.availability.scripts import scripts
from halobestie.clock import iso
from halobestie.errors import NotOnline
from halobestie.valkey.autopipe import AutoPipeline
from tests.conftest import AppFactory, Instance, Servers, eventually
from tests.factories import Person, make_user
from tests.failures import helpers
from tests.failures.helpers import fallback_reads, heartbeat, online_mitra, valkey_url_via
from tests.support.proxy import FaultProxy

# The shared fixtures of the failure tests (requested by their short names).
valkey_fault_app_fixture = helpers.valkey_fault_app_fixture
valkey_proxy_fixture = helpers.valkey_proxy_fixture

# Generous bound for "answers, does not hang" on a noisy 2-core machine (the operation
# timeout is 0.3 s in the tests).
NO_HANG_SECONDS = 10.0


@pytest.fixture
async def inst(make_app: AppFactory) -> AsyncIterator[Instance]:
    """The app of the batching, NOSCRIPT and cancellation tests, with a 5 s Valkey timeout
    (the echo pipelines' too): they check which write carries which call and who gets
    which reply, and on a loaded box a loop starved past the suite's 0.3 s sends a caller
    to the Postgres fallback instead (a CI run lost a batching test to it). The timeout
    tests below keep the 0.3 s: they use `valkey_fault_app`."""
    async with make_app(VALKEY_OPERATION_TIMEOUT_SECONDS=5.0) as instance:
        yield instance


# Writes its argument under its key and echoes it back: shows which reply went to whom.
ECHO = """
if ARGV[1] == 'boom' then return redis.error_reply('ERR boom') end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


class WireSpy:
    """Counts the EVALSHA commands in every write on the connections of `client`'s pool
    (one write carrying n of them is one batch of n), whatever sends them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: Any) -> None:
        self.writes: list[int] = []
        pool = client.connection_pool
        get_connection = pool.get_connection

        async def spied_connection(*args: Any, **kwargs: Any) -> Any:
            conn = await get_connection(*args, **kwargs)
            if "send_packed_command" not in vars(conn):
                send = conn.send_packed_command

                async def counted(command: Any, *s_args: Any, **s_kwargs: Any) -> Any:
                    data = command.encode() if isinstance(command, str) else command
                    if not isinstance(data, bytes):
                        data = b"".join(bytes(chunk) for chunk in data)
                    if n := data.count(b"$7\r\nEVALSHA\r\n"):
                        self.writes.append(n)
                    return await send(data, *s_args, **s_kwargs)

                conn.send_packed_command = counted
            return conn

        monkeypatch.setattr(pool, "get_connection", spied_connection)


async def spy_on_heartbeats(monkeypatch: pytest.MonkeyPatch, inst: Instance) -> WireSpy:
    """A spy on the app's batched heartbeats, with the heartbeat script already in
    Valkey's cache (the shared test server may not have it yet: a NOSCRIPT batch is
    retried call by call, which the NOSCRIPT tests cover on purpose)."""
    await inst.ctx.mirror.client.script_load(scripts(inst.ctx).heartbeat.script)
    return WireSpy(monkeypatch, inst.ctx.mirror.batched._client)


@asynccontextmanager
async def echo_pipeline(url: str, **options: Any) -> AsyncIterator[tuple[AutoPipeline, Any]]:
    """An AutoPipeline of its own (not the app's) and the ECHO script, loaded."""
    client = valkey_async.Valkey.from_url(url, decode_responses=True)
    options.setdefault("timeout", 5.0)
    pipeline = AutoPipeline(client, **options)
    script = client.register_script(ECHO)
    await client.script_load(ECHO)
    try:
        yield pipeline, script
    finally:
        await pipeline.close()


def echo(pipeline: AutoPipeline, script: Any, name: str) -> asyncio.Task[Any]:
    return asyncio.create_task(pipeline.call(script, [f"echo:{name}"], [name]))


async def deactivated_mitra(inst: Instance) -> Person:
    admin = await make_user(inst.ctx, "admin")
    mitra = await online_mitra(inst)
    r = await inst.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    return mitra


async def last_heartbeat_at(pg: asyncpg.Connection, mitra: Person) -> Any:
    return await pg.fetchval("SELECT last_heartbeat_at FROM mitras WHERE id = $1", mitra.id)


# -- batching ------------------------------------------------------------------------


async def test_concurrent_heartbeats_go_out_as_one_batch_each_with_its_own_answer(
    inst: Instance, valkey: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = [await online_mitra(inst) for _ in range(4)]
    offline = await make_user(inst.ctx, "mitra")
    deactivated = await deactivated_mitra(inst)
    callers = [online[0], offline, online[1], deactivated, online[2], online[3]]
    spy = await spy_on_heartbeats(monkeypatch, inst)
    now = inst.clock.advance(7)

    responses = await asyncio.gather(*(heartbeat(inst, m) for m in callers))

    assert spy.writes == [len(callers)]  # one write carried every ping
    answers = {m.id: (r.status_code, r.json()) for m, r in zip(callers, responses, strict=True)}
    for mitra in online:
        assert answers[mitra.id][0] == 200, answers[mitra.id]
        assert answers[mitra.id][1]["at"] == iso(now)
        assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) == iso(now)
    assert answers[offline.id][0] == 409 and answers[offline.id][1]["error"] == "not_online"
    assert answers[deactivated.id][0] == 403
    assert answers[deactivated.id][1]["error"] == "mitra_deactivated"
    for mitra in (offline, deactivated):
        assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) is None
    assert await fallback_reads(inst, "heartbeat") == 0


async def test_calls_beyond_max_batch_are_split_and_replies_stay_with_their_callers(
    clean: Servers, valkey: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with echo_pipeline(clean.valkey_url, max_batch=3) as (pipeline, script):
        spy = WireSpy(monkeypatch, pipeline._client)
        names = [f"caller-{i}" for i in range(8)]
        replies = await asyncio.gather(*(echo(pipeline, script, n) for n in names))
        assert replies == names
        assert sorted(spy.writes) == [2, 3, 3]  # sent side by side, in any order
        assert [await valkey.get(f"echo:{n}") for n in names] == names

        # Calls in later loop turns are later batches, a lone call a batch of one.
        assert await echo(pipeline, script, "alone") == "alone"
        assert sorted(spy.writes) == [1, 2, 3, 3]


async def test_an_error_reply_fails_only_its_own_call(
    clean: Servers, valkey: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with echo_pipeline(clean.valkey_url) as (pipeline, script):
        spy = WireSpy(monkeypatch, pipeline._client)
        names = ["before", "boom", "after"]
        results = await asyncio.gather(
            *(echo(pipeline, script, n) for n in names), return_exceptions=True
        )
        assert spy.writes == [3]
        assert results[0] == "before" and results[2] == "after"
        assert isinstance(results[1], ResponseError) and "boom" in str(results[1])
        assert await valkey.get("echo:after") == "after"


async def test_plain_commands_share_a_batch_with_lua_calls_and_get_their_own_replies(
    clean: Servers, valkey: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`command` (the beacon's GET) rides the same batches as the heartbeat's Lua calls."""
    await valkey.set("plain:a", "alpha")
    async with echo_pipeline(clean.valkey_url) as (pipeline, script):
        spy = WireSpy(monkeypatch, pipeline._client)
        results = await asyncio.gather(
            pipeline.command("GET", "plain:a"),
            echo(pipeline, script, "lua"),
            pipeline.command("GET", "plain:missing"),
            pipeline.command("SET", "plain:b", "beta"),
        )
        assert list(results) == ["alpha", "lua", None, "OK"]  # raw replies, no callbacks
        assert spy.writes == [1]  # one write: the EVALSHA travelled with the three commands
        assert await valkey.get("plain:b") == "beta"


async def test_concurrent_beacon_polls_read_the_snapshot_in_one_batch(
    inst: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    await online_mitra(inst)
    first = await inst.client.get("/api/availability")  # computes and stores the snapshot
    assert first.status_code == 200, first.text
    sent: list[tuple[Any, ...]] = []
    round_trip = inst.ctx.mirror.batched._round_trip

    async def counted(commands: list[tuple[Any, ...]]) -> list[Any]:
        sent.append(tuple(c[0] for c in commands))
        return await round_trip(commands)

    monkeypatch.setattr(inst.ctx.mirror.batched, "_round_trip", counted)

    polls = await asyncio.gather(*(inst.client.get("/api/availability") for _ in range(6)))

    assert [p.json() for p in polls] == [first.json()] * 6
    assert sent == [("GET",) * 6]


# -- NOSCRIPT ------------------------------------------------------------------------


async def test_after_script_flush_a_batch_of_heartbeats_reloads_the_script_and_lands(
    inst: Instance, valkey: Any, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = [await online_mitra(inst) for _ in range(3)]
    offline = await make_user(inst.ctx, "mitra")
    sha = scripts(inst.ctx).heartbeat.sha
    inst.clock.advance(3)
    assert (await heartbeat(inst, online[0])).status_code == 200  # loaded, and pooled
    assert await valkey.script_exists(sha) == [True]
    online_at = [await last_heartbeat_at(pg, m) for m in online]

    spy = await spy_on_heartbeats(monkeypatch, inst)
    await valkey.script_flush()  # as a Valkey restart would leave it (minus the data)
    assert await valkey.script_exists(sha) == [False]
    now = inst.clock.advance(5)
    responses = await asyncio.gather(*(heartbeat(inst, m) for m in [*online, offline]))

    assert [r.status_code for r in responses] == [200, 200, 200, 409], [r.text for r in responses]
    assert responses[3].json()["error"] == "not_online"
    for mitra in online:
        assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) == iso(now)
    assert await valkey.script_exists(sha) == [True]
    # Sent as one batch, then the NOSCRIPT replies retried one call at a time.
    assert spy.writes[0] == 4 and set(spy.writes[1:]) == {1}, spy.writes
    # Answered by Valkey, not by the Postgres fallback: NOSCRIPT is not an outage.
    assert inst.ctx.mirror.reachable and inst.ctx.mirror.trusted
    assert await fallback_reads(inst, "heartbeat") == 0
    assert [await last_heartbeat_at(pg, m) for m in online] == online_at


async def test_a_first_batch_on_a_server_without_the_script_still_succeeds(
    clean: Servers, valkey: Any
) -> None:
    async with echo_pipeline(clean.valkey_url) as (pipeline, script):
        await valkey.script_flush()
        names = ["a", "b", "c"]
        assert await asyncio.gather(*(echo(pipeline, script, n) for n in names)) == names
        assert [await valkey.get(f"echo:{n}") for n in names] == names


# -- cancellation --------------------------------------------------------------------


async def test_a_caller_cancelled_before_the_flush_is_not_sent_and_the_others_are_answered(
    inst: Instance, valkey: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mitras = [await online_mitra(inst) for _ in range(5)]
    offline = await make_user(inst.ctx, "mitra")
    callers = [*mitras, offline]
    online_at = iso(inst.clock.now())
    spy = await spy_on_heartbeats(monkeypatch, inst)
    now = inst.clock.advance(9)

    tasks = [asyncio.create_task(do_record_heartbeat(inst.ctx, m.id, now)) for m in callers]
    await asyncio.sleep(0)  # every task has queued its call; the flush has not run yet
    assert len(inst.ctx.mirror.batched._pending) == len(callers)
    cancelled = mitras[2]
    tasks[2].cancel()
    async with asyncio.timeout(NO_HANG_SECONDS):
        results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[2], asyncio.CancelledError)
    assert spy.writes == [len(callers) - 1]  # the cancelled call never left
    for mitra, result in zip(callers, results, strict=True):
        if mitra is cancelled or mitra is offline:
            continue
        assert isinstance(result, HeartbeatResult), result
        assert (result.at, result.source) == (now, "valkey")
        assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) == iso(now)
    assert isinstance(results[-1], NotOnline)  # its neighbour's reply did not shift to it
    assert await valkey.get(inst.ctx.keys.heartbeat(cancelled.id)) == online_at
    # The pipeline is not left in a bad state: the cancelled mitra pings fine afterwards.
    again = await do_record_heartbeat(inst.ctx, cancelled.id, now)
    assert (again.at, again.source) == (now, "valkey")
    assert await valkey.get(inst.ctx.keys.heartbeat(cancelled.id)) == iso(now)


async def test_a_batch_whose_callers_were_all_cancelled_sends_nothing(
    clean: Servers, valkey: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with echo_pipeline(clean.valkey_url) as (pipeline, script):
        spy = WireSpy(monkeypatch, pipeline._client)
        tasks = [echo(pipeline, script, n) for n in ("x", "y")]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert await echo(pipeline, script, "z") == "z"
        assert spy.writes == [1]
        assert await valkey.get("echo:x") is None and await valkey.get("echo:y") is None


# -- Valkey unreachable --------------------------------------------------------------


async def test_a_cut_valkey_fails_every_call_of_the_batch_and_the_pipeline_recovers(
    clean: Servers, valkey_proxy: FaultProxy, valkey: Any
) -> None:
    url = valkey_url_via(clean, valkey_proxy)
    async with echo_pipeline(url) as (pipeline, script):
        assert await echo(pipeline, script, "warm") == "warm"  # a pooled connection
        await valkey_proxy.cut()
        names = ["p", "q", "r"]
        async with asyncio.timeout(NO_HANG_SECONDS):
            results = await asyncio.gather(
                *(echo(pipeline, script, n) for n in names), return_exceptions=True
            )
        assert all(isinstance(r, ValkeyConnectionError) for r in results), results

        await valkey_proxy.restore()
        assert await asyncio.gather(*(echo(pipeline, script, n) for n in names)) == names
        assert [await valkey.get(f"echo:{n}") for n in names] == names


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "new_connection"])
async def test_a_black_holed_batch_of_heartbeats_each_falls_back_to_postgres_in_time(
    valkey_fault_app: Instance,
    valkey_proxy: FaultProxy,
    pg: asyncpg.Connection,
    valkey: Any,
    monkeypatch: pytest.MonkeyPatch,
    pooled: bool,
) -> None:
    """Not the cut (connection refused) outage of failures/test_heartbeat_hot_path.py: the
    batched connections have no per-read socket timeout, so only the batch's own timeout
    stands between a silent Valkey and heartbeats that never answer (whether the batch
    waits on its replies or on a new connection's handshake)."""
    inst = valkey_fault_app
    online = [await online_mitra(inst) for _ in range(4)]
    offline = await make_user(inst.ctx, "mitra")
    deactivated = await deactivated_mitra(inst)
    if pooled:
        assert (await heartbeat(inst, online[0])).status_code == 200
    else:  # going online wrote through the same connections: start without any
        await inst.ctx.mirror.batched._client.connection_pool.disconnect()
    was = await last_heartbeat_at(pg, deactivated)
    spy = await spy_on_heartbeats(monkeypatch, inst)

    await valkey_proxy.blackhole()
    now = inst.clock.advance(11)
    callers = [*online, offline, deactivated]
    async with asyncio.timeout(NO_HANG_SECONDS):
        responses = await asyncio.gather(*(heartbeat(inst, m) for m in callers))

    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 200, 409, 403], [r.text for r in responses]
    # One batch tried, and it failed as one (a new connection hangs before it is sent).
    assert spy.writes == ([len(callers)] if pooled else [])
    assert not inst.ctx.mirror.reachable
    assert await fallback_reads(inst, "heartbeat") == len(callers)
    for mitra, response in zip(online, responses, strict=False):
        assert response.json()["at"] == iso(now)
        assert await last_heartbeat_at(pg, mitra) == now  # written straight through
    assert await last_heartbeat_at(pg, offline) is None
    assert await last_heartbeat_at(pg, deactivated) == was

    # Once Valkey answers again, the batched connections carry no stale replies: every
    # caller gets its own answer from Valkey again.
    await valkey_proxy.restore()
    await eventually(lambda: inst.ctx.mirror.trusted and inst.ctx.mirror.reachable)
    later = inst.clock.advance(5)
    responses = await asyncio.gather(*(heartbeat(inst, m) for m in callers))
    assert [r.status_code for r in responses] == statuses, [r.text for r in responses]
    assert spy.writes[-1:] == [len(callers)] and len(spy.writes) == (2 if pooled else 1)
    assert await fallback_reads(inst, "heartbeat") == len(callers)
    for mitra in online:
        assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) == iso(later)


# -- close ---------------------------------------------------------------------------


async def test_close_waits_for_the_batch_in_flight(
    clean: Servers, valkey_proxy: FaultProxy, valkey: Any
) -> None:
    url = valkey_url_via(clean, valkey_proxy)
    async with echo_pipeline(url, timeout=NO_HANG_SECONDS) as (pipeline, script):
        assert await echo(pipeline, script, "warm") == "warm"
        await valkey_proxy.blackhole()  # the batch is sent, its replies are held back
        names = ["one", "two", "three"]
        tasks = [echo(pipeline, script, n) for n in names]
        # Scheduled right behind the callers, so close() starts while their calls are
        # queued and not yet flushed: it must wait for those too, then for the batch.
        closing = asyncio.create_task(pipeline.close())
        await asyncio.sleep(0.2)
        assert not closing.done()
        assert not any(task.done() for task in tasks)

        await valkey_proxy.restore()
        async with asyncio.timeout(NO_HANG_SECONDS):
            await closing
        assert all(task.done() for task in tasks)
        assert [task.result() for task in tasks] == names
        assert [await valkey.get(f"echo:{n}") for n in names] == names
