"""Durable timers on real processes and a real clock: exactly once with two instances on
one Postgres, through a `kill -9` and a restart, and through a Postgres outage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from halobestie.clock import SystemClock
from halobestie.runtime import Runtime
from halobestie.timers import CHANNEL
from tests.conftest import Servers, eventually, settings_for
from tests.failures.helpers import postgres_proxy_fixture, postgres_url_via
from tests.multi.processes import (
    cancellations,
    pending_sessions_with_payment_timeouts,
    serve_process,
    statuses,
    timer_rows,
)
from tests.support.proxy import FaultProxy

__all__ = ["postgres_proxy_fixture"]


@pytest.fixture
async def fire_log(pg: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """Records every write of `timers.fired_at`: a timer fired twice shows two rows even
    when its handler is idempotent. Test-only; removed afterwards."""
    await pg.execute(
        """
        DROP TABLE IF EXISTS test_timer_fires CASCADE;
        CREATE TABLE test_timer_fires (timer_id bigint NOT NULL, backend int NOT NULL);
        CREATE OR REPLACE FUNCTION test_log_timer_fire() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO test_timer_fires VALUES (NEW.id, pg_backend_pid());
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_timer_fired AFTER UPDATE OF fired_at ON timers
            FOR EACH ROW WHEN (NEW.fired_at IS NOT NULL) EXECUTE FUNCTION test_log_timer_fire();
        """
    )
    try:
        yield pg
    finally:
        await pg.execute(
            "DROP TRIGGER IF EXISTS test_timer_fired ON timers;"
            " DROP FUNCTION IF EXISTS test_log_timer_fire() CASCADE;"
            " DROP TABLE IF EXISTS test_timer_fires;"
        )


async def sleep_until(when: datetime) -> None:
    """Wall-clock wait for a due time the test itself chose (not a production cadence)."""
    await asyncio.sleep(max((when - datetime.now(UTC)).total_seconds(), 0.0))


async def fires_per_timer(pg: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, int]:
    rows = await pg.fetch(
        "SELECT t.ref_id, count(f.timer_id) AS n FROM timers t"
        " LEFT JOIN test_timer_fires f ON f.timer_id = t.id"
        " WHERE t.ref_id = ANY($1::uuid[]) GROUP BY t.ref_id",
        ids,
    )
    return {row["ref_id"]: row["n"] for row in rows}


async def all_fired(pg: asyncpg.Connection, ids: list[UUID]) -> bool:
    rows = await timer_rows(pg, ids)
    return len(rows) == len(ids) and all(row["fired_at"] is not None for row in rows)


async def test_timers_fire_exactly_once_with_two_instances_on_one_postgres(
    clean: Servers, fire_log: asyncpg.Connection, tmp_path: Path
) -> None:
    pg = fire_log
    async with (
        serve_process(clean, tmp_path, "a") as a,
        serve_process(clean, tmp_path, "b") as b,
    ):
        await asyncio.gather(a.wait_serving(), b.wait_serving())
        # Both instances are idle and woken by the same NOTIFY: they race for every row.
        ids = await pending_sessions_with_payment_timeouts(
            pg, 50, datetime.now(UTC) + timedelta(seconds=1)
        )
        await eventually(lambda: all_fired(pg, ids), within=60)
        assert set((await fires_per_timer(pg, ids)).values()) == {1}
        assert set((await cancellations(pg, ids)).values()) == {1}
        assert await statuses(pg, ids) == {"cancelled"}
        history = await pg.fetch(
            "SELECT actor_role, reason, from_status FROM chat_session_events"
            " WHERE session_id = ANY($1::uuid[]) AND to_status = 'cancelled'",
            ids,
        )
        assert {tuple(row) for row in history} == {("system", "payment timeout", "pending_payment")}
        assert a.proc.returncode is None and b.proc.returncode is None


async def test_timers_pending_at_a_kill_9_fire_once_when_the_next_process_starts(
    clean: Servers, fire_log: asyncpg.Connection, tmp_path: Path
) -> None:
    pg = fire_log
    async with serve_process(clean, tmp_path, "doomed") as doomed:
        await doomed.wait_serving()
        due = datetime.now(UTC) + timedelta(seconds=3)
        ids = await pending_sessions_with_payment_timeouts(pg, 20, due)
        doomed.kill9()
        await doomed.proc.wait()
    assert not any(row["fired_at"] for row in await timer_rows(pg, ids)), "fired before kill"

    await sleep_until(due + timedelta(seconds=0.5))  # nobody runs while they fall due
    assert await statuses(pg, ids) == {"pending_payment"}

    async with serve_process(clean, tmp_path, "successor") as successor:
        await successor.wait_serving()
        # Restored before serving (and before the seed): settled the moment it answers.
        assert await all_fired(pg, ids)
        assert await statuses(pg, ids) == {"cancelled"}
        assert set((await cancellations(pg, ids)).values()) == {1}
        assert set((await fires_per_timer(pg, ids)).values()) == {1}


async def listening_backends(pg: asyncpg.Connection) -> set[int]:
    rows = await pg.fetch(
        "SELECT pid FROM pg_stat_activity WHERE query = $1 AND datname = current_database()",
        f'LISTEN "{CHANNEL}"',
    )
    return {row["pid"] for row in rows}


async def test_timer_runner_recovers_by_itself_after_a_postgres_outage(
    clean: Servers, pg: asyncpg.Connection, postgres_proxy: FaultProxy
) -> None:
    settings = settings_for(
        DATABASE_URL=postgres_url_via(clean, postgres_proxy),
        VALKEY_URL=clean.valkey_url,
        TIMERS_ENABLED=True,
        DATABASE_TIMEOUT_SECONDS=1,
    )
    runtime = Runtime(settings, SystemClock())
    await runtime.start()
    try:
        before = await eventually(lambda: listening_backends(pg), within=15)
        due = datetime.now(UTC) + timedelta(seconds=1.5)
        ids = await pending_sessions_with_payment_timeouts(pg, 5, due)
        await postgres_proxy.cut()  # every connection of the instance dies, LISTEN included

        async def old_listener_gone() -> bool:
            return not (await listening_backends(pg)) & before

        await eventually(old_listener_gone, within=15)
        await sleep_until(due + timedelta(seconds=1))  # they fall due during the outage
        assert await statuses(pg, ids) == {"pending_payment"}

        await postgres_proxy.restore()
        await eventually(lambda: all_fired(pg, ids), within=30)
        assert set((await cancellations(pg, ids)).values()) == {1}
        # The LISTEN connection came back too: a new backend, without a restart.
        after = await eventually(lambda: listening_backends(pg), within=30)
        assert not after & before
    finally:
        await postgres_proxy.restore()
        await runtime.stop()


@pytest.mark.timeout(60)
async def test_timer_runner_stops_even_when_a_wake_up_races_the_stop(
    clean: Servers,
) -> None:
    """On 3.11, asyncio.wait_for returns the result instead of raising when a cancel and
    the awaited event land together; a runner relying on the cancel alone then loops on
    and shutdown hangs. Here the wake-up (what a NOTIFY does) lands right before stop()."""
    settings = settings_for(
        DATABASE_URL=clean.database_url, VALKEY_URL=clean.valkey_url, TIMERS_ENABLED=True
    )
    runtime = Runtime(settings, SystemClock())
    await runtime.start()
    try:
        for _ in range(5):
            runner = runtime.timers
            await asyncio.sleep(0.2)  # idle, waiting for its next due time
            runner._wake.set()
            await asyncio.sleep(0)  # the waiter is released, the runner not yet resumed
            await asyncio.sleep(0)
            await runner.stop()  # awaited directly: it cancels before anything else runs
            runner.start()
    finally:
        await asyncio.wait_for(runtime.stop(), 30)
