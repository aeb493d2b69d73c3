"""An instance frozen (SIGSTOP: a stop-the-world pause, a VM migration, a debugger) while
it fires a payment timeout, holding the timer row and the session row locked. Postgres
cuts its transaction after DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS; meanwhile the
live instance answers the payment webhook 200 (or 409 if the timeout won), never 503, and
fires the timer itself. Frozen mid-statement (between asyncpg's prepare and execute),
which Postgres does not time out, the live instance's stall reaper cuts it off after the
same bound and a quarter more. Real processes, real clock, default bounds
(DATABASE_TIMEOUT_SECONDS 5: idle in transaction 2 s, lock 3.5 s, statement 4 s)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import asyncpg
import httpx
import pytest

from tests.conftest import Servers, eventually
from tests.multi.processes import (
    ServeProcess,
    cancellations,
    pending_sessions_with_payment_timeouts,
    serve_process,
)
from tests.sessions.helpers import sign, webhook_body

IDLE_IN_TRANSACTION = 2.0  # the default: 0.4 x DATABASE_TIMEOUT_SECONDS
REAPED = IDLE_IN_TRANSACTION * 1.25  # stalls.py: that bound, and one look a quarter later
CLIENT_TIMEOUT = 5.0  # DATABASE_TIMEOUT_SECONDS: where the old answer was a 503
# Scheduling slack on a loaded 2-core machine, on top of the idle-in-transaction cut.
SLACK = 2.0

# Backends of the app's pools name their process (db.Bounds.server_settings).
WAITING_ON_A_LOCK = """
SELECT application_name FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
  AND application_name LIKE 'halobestie pid=%'
"""


@dataclass
class Stalled:
    frozen: ServeProcess
    live: ServeProcess
    session: UUID
    at: float  # loop time of the freeze


HOLD_HISTORY = (999, 1)  # a test-only advisory lock, outside the app's namespace


@pytest.fixture
async def history_gate(pg: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """Every insert into chat_session_events first takes advisory lock HOLD_HISTORY (in
    its own transaction). A test holding it stops whoever fires a timer right after the
    timer row and the session are locked and the session updated, with the whole
    statement, Sync included, already sent. Test-only; removed afterwards."""
    await pg.execute(
        f"""
        CREATE OR REPLACE FUNCTION test_hold_history() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock{HOLD_HISTORY}; RETURN NEW; END $$;
        CREATE TRIGGER test_hold_history BEFORE INSERT ON chat_session_events
            FOR EACH ROW EXECUTE FUNCTION test_hold_history();
        """
    )
    try:
        yield pg
    finally:
        await pg.execute(
            "DROP TRIGGER IF EXISTS test_hold_history ON chat_session_events;"
            " DROP FUNCTION IF EXISTS test_hold_history();"
        )


@asynccontextmanager
async def an_instance_frozen_mid_fire(
    clean: Servers, pg: asyncpg.Connection, log_dir: Path, *, mid_statement: bool = False
) -> AsyncIterator[Stalled]:
    """Two instances; one claims a due payment timeout, locks its session and updates
    it, and is frozen there, its transaction open. Which one is up to them: the firing
    one blocks on a gate the test holds, is found by its application_name, frozen, and
    only then let through. Through the history gate (`history_gate` fixture) its insert
    completes and its transaction sits idle; with `mid_statement`, the gate is the
    history table itself, which stops the insert while Postgres parses it, so the frozen
    process has not sent Bind/Execute/Sync yet (asyncpg prepares first) and its backend
    stays `active`, waiting for it."""
    async with (
        serve_process(clean, log_dir, "a") as a,
        serve_process(clean, log_dir, "b") as b,
    ):
        await asyncio.gather(a.wait_serving(), b.wait_serving())
        by_pid = {a.proc.pid: a, b.proc.pid: b}
        frozen: ServeProcess | None = None
        gate = await asyncpg.connect(clean.database_url)
        try:
            if mid_statement:
                await gate.execute("BEGIN; LOCK TABLE chat_session_events IN SHARE MODE")
            else:
                await gate.execute(f"SELECT pg_advisory_lock{HOLD_HISTORY}")
            [session] = await pending_sessions_with_payment_timeouts(
                pg, 1, datetime.now(UTC) + timedelta(milliseconds=300)
            )

            async def firing_pid() -> int | None:
                for row in await pg.fetch(WAITING_ON_A_LOCK):
                    match = re.search(r"pid=(\d+)", row["application_name"])
                    if match and int(match.group(1)) in by_pid:
                        return int(match.group(1))
                return None

            # Well within the lock timeout (3.5 s) the firing insert waits under.
            pid = await eventually(firing_pid, within=2.0)
            frozen = by_pid[pid]
            frozen.proc.send_signal(signal.SIGSTOP)
            if mid_statement:
                await gate.execute("COMMIT")
            else:
                await gate.execute(f"SELECT pg_advisory_unlock{HOLD_HISTORY}")
            at = asyncio.get_running_loop().time()
            expected = "active" if mid_statement else "idle in transaction"

            async def frozen_backend_is(state: str) -> bool:
                row = await pg.fetchrow(
                    "SELECT state, wait_event FROM pg_stat_activity WHERE application_name"
                    " LIKE $1 || '%' AND state <> 'idle'",
                    f"halobestie pid={pid} ",
                )
                return row is not None and (row["state"], row["wait_event"]) == (
                    state,
                    "ClientRead",
                )

            await eventually(lambda: frozen_backend_is(expected), within=1.0)
            live = b if frozen is a else a
            yield Stalled(frozen, live, session, at)
        finally:
            await gate.close()
            if frozen is not None:
                frozen.proc.send_signal(signal.SIGCONT)


async def status_of(pg: asyncpg.Connection, session: UUID) -> str:
    status: str = await pg.fetchval("SELECT status FROM chat_sessions WHERE id = $1", session)
    return status


async def pay_on_the_live_instance(stalled: Stalled) -> tuple[httpx.Response, float]:
    raw = webhook_body(stalled.session, "psp-frozen")
    headers = {"content-type": "application/json", "x-signature": sign(raw)}
    async with httpx.AsyncClient(base_url=stalled.live.url, timeout=30) as client:
        started = time.monotonic()
        r = await client.post("/api/payments/webhook", content=raw, headers=headers)
        return r, time.monotonic() - started


def assert_paid_or_timed_out(r: httpx.Response) -> None:
    """Paid once the frozen holder was cut off, or refused because the live instance's
    own timer run got there first: either is an answer, not an outage."""
    assert r.status_code in (200, 409), r.text
    if r.status_code == 409:
        assert r.json()["error"] == "invalid_state", r.text


async def assert_settled_once(pg: asyncpg.Connection, stalled: Stalled) -> None:
    assert await status_of(pg, stalled.session) in ("active", "cancelled")
    # The frozen instance's attempt was rolled back whole: at most one cancellation.
    assert (await cancellations(pg, [stalled.session]))[stalled.session] <= 1


async def assert_fired_by_the_live_instance(
    pg: asyncpg.Connection, stalled: Stalled, within: float
) -> None:
    await eventually(lambda: _is(pg, stalled.session, "cancelled"), within=within)
    waited = asyncio.get_running_loop().time() - stalled.at
    assert waited < within, waited
    history = await pg.fetch(
        "SELECT actor_role, reason FROM chat_session_events"
        " WHERE session_id = $1 AND to_status = 'cancelled'",
        stalled.session,
    )
    assert [tuple(row) for row in history] == [("system", "payment timeout")]
    fired = await pg.fetchval(
        "SELECT fired_at IS NOT NULL FROM timers WHERE ref_id = $1", stalled.session
    )
    assert fired


async def test_a_frozen_instance_does_not_hold_the_payment_webhook_on_the_live_one(
    clean: Servers, history_gate: asyncpg.Connection, tmp_path: Path
) -> None:
    pg = history_gate
    async with an_instance_frozen_mid_fire(clean, pg, tmp_path) as stalled:
        r, took = await pay_on_the_live_instance(stalled)
        assert_paid_or_timed_out(r)
        assert took < IDLE_IN_TRANSACTION + SLACK < CLIENT_TIMEOUT, took
        await assert_settled_once(pg, stalled)

        # Thawed, the frozen instance finds its connection gone and carries on.
        stalled.frozen.proc.send_signal(signal.SIGCONT)
        async with httpx.AsyncClient(base_url=stalled.frozen.url, timeout=10) as client:

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, within=15)
        assert stalled.frozen.proc.returncode is None


async def test_the_live_instance_fires_a_timer_claimed_by_a_frozen_one(
    clean: Servers, history_gate: asyncpg.Connection, tmp_path: Path
) -> None:
    pg = history_gate
    async with an_instance_frozen_mid_fire(clean, pg, tmp_path) as stalled:
        await assert_fired_by_the_live_instance(pg, stalled, IDLE_IN_TRANSACTION + SLACK)


async def test_an_instance_frozen_mid_statement_is_cut_off_by_the_live_one(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Postgres times nothing out while a backend waits for its client mid-statement;
    the live instance's stall reaper terminates it (stalls.py) after the same bound and
    a quarter more."""
    async with an_instance_frozen_mid_fire(clean, pg, tmp_path, mid_statement=True) as stalled:
        r, took = await pay_on_the_live_instance(stalled)
        assert_paid_or_timed_out(r)
        assert took < REAPED + SLACK < CLIENT_TIMEOUT, took
        await assert_settled_once(pg, stalled)
    # The reaper said what it did, naming the frozen process.
    assert "stalled_backend_terminated" in stalled.live.tail()


async def test_a_timer_claimed_by_an_instance_frozen_mid_statement_fires_on_the_live_one(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    async with an_instance_frozen_mid_fire(clean, pg, tmp_path, mid_statement=True) as stalled:
        await assert_fired_by_the_live_instance(pg, stalled, REAPED + SLACK)


async def _is(pg: asyncpg.Connection, session: UUID, status: str) -> bool:
    return await status_of(pg, session) == status
