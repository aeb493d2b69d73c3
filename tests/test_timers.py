"""The timer engine's registry (timers.py): kinds and handlers are one table that the
runtime builds at startup, never registered by importing a module; a due timer of a kind
without a handler is left unfired and counted, never silently marked fired."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, get_args
from uuid import UUID

import asyncpg

from halobestie.runtime import timer_handlers
from halobestie.timers import (
    HANDLERS,
    TimerKind,
    restore_timers,
    run_due_timers,
    schedule_timer,
)
from tests.conftest import TEST_JWT_SECRET, TEST_WEBHOOK_SECRET, Instance, Servers
from tests.failures.helpers import metric_sum

# A process that starts the engine as benchmarks/inproc.py does: the runtime alone,
# never the API and its routers.
RUNTIME_ONLY = """
import asyncio, sys
from halobestie.config import load_settings
from halobestie.runtime import Runtime

async def main() -> None:
    runtime = Runtime(load_settings())
    await runtime.start()
    await runtime.stop()
    imported = sorted(m for m in sys.modules if m.startswith("halobestie.api"))
    assert not imported, f"the API was imported: {imported}"

asyncio.run(main())
"""


async def _customer(pg: asyncpg.Connection, email: str) -> UUID:
    customer: UUID = await pg.fetchval(
        "INSERT INTO users (email, password_hash, display_name, role)"
        " VALUES ($1, 'x', 'C', 'customer') RETURNING id",
        email,
    )
    return customer


async def _searching_request(pg: asyncpg.Connection, customer: UUID, due: datetime) -> UUID:
    """A pairing request and its offer expiry, as the blast creates them, due at `due`."""
    async with pg.transaction():
        request: UUID = await pg.fetchval(
            "INSERT INTO pairing_requests (customer_id, duration_minutes, status, expires_at,"
            " created_at) VALUES ($1, 30, 'searching', $2, $3) RETURNING id",
            customer,
            due,
            due - timedelta(seconds=30),
        )
        await schedule_timer(pg, "offer_expiry", request, due)
    return request


async def test_a_runtime_started_without_the_api_fires_pairing_expiries(
    clean: Servers, pg: asyncpg.Connection
) -> None:
    due = datetime.now(UTC) - timedelta(minutes=1)
    request = await _searching_request(pg, await _customer(pg, "c@example.com"), due)
    env = {
        **os.environ,
        "DATABASE_URL": clean.database_url,
        "VALKEY_URL": clean.valkey_url,
        "JWT_SECRET": TEST_JWT_SECRET,
        "PAYMENT_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "HALOBESTIE_ENV": "test",
        "SWEEPS_ENABLED": "false",
        "TIMERS_ENABLED": "false",  # the startup restore alone fires what is overdue
        "LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUNTIME_ONLY,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, output.decode()

    status = await pg.fetchval("SELECT status FROM pairing_requests WHERE id = $1", request)
    assert status == "expired"
    fired = await pg.fetchval("SELECT fired_at FROM timers WHERE ref_id = $1", request)
    assert fired is not None


async def test_the_table_has_a_handler_for_every_kind() -> None:
    assert sorted(timer_handlers()) == sorted(get_args(TimerKind))


async def _payment_timeout_due(pg: asyncpg.Connection, customer: UUID, due: datetime) -> UUID:
    mitra = await pg.fetchval(
        "INSERT INTO users (email, password_hash, display_name, role)"
        " VALUES ('m@example.com', 'x', 'M', 'mitra') RETURNING id"
    )
    await pg.execute("INSERT INTO mitras (id) VALUES ($1)", mitra)
    session: UUID = await pg.fetchval(
        "INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes)"
        " VALUES ($1, $2, 'pending_payment', 30) RETURNING id",
        customer,
        mitra,
    )
    await schedule_timer(pg, "payment_timeout", session, due)
    return session


async def test_a_due_timer_of_a_kind_without_a_handler_is_left_unfired_and_counted(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    # This instance knows no payment timeout (an older release during a rolling deploy).
    known: dict[Any, Any] = dict(timer_handlers())
    del known["payment_timeout"]
    inst.ctx.provide(HANDLERS, known)
    now = inst.clock.now()
    customer = await _customer(pg, "c@example.com")
    session = await _payment_timeout_due(pg, customer, now - timedelta(seconds=1))
    request = await _searching_request(pg, customer, now - timedelta(seconds=1))

    assert await run_due_timers(inst.ctx, now) == 1  # the offer expiry; and no endless loop
    assert await pg.fetchval("SELECT status FROM pairing_requests WHERE id = $1", request) == (
        "expired"
    )
    fired = await pg.fetchval("SELECT fired_at FROM timers WHERE ref_id = $1", session)
    assert fired is None  # not silently marked fired: left for an instance that knows it
    status = await pg.fetchval("SELECT status FROM chat_sessions WHERE id = $1", session)
    assert status == "pending_payment"

    await restore_timers(inst.ctx, now)  # what startup runs: it reports them
    assert await metric_sum(inst, "halobestie_timers_unhandled_due") == 1

    inst.ctx.provide(HANDLERS, timer_handlers())  # an instance that knows the kind fires it
    assert await run_due_timers(inst.ctx, now) == 1
    assert await pg.fetchval("SELECT status FROM chat_sessions WHERE id = $1", session) == (
        "cancelled"
    )
    await restore_timers(inst.ctx, now)
    assert await metric_sum(inst, "halobestie_timers_unhandled_due") == 0
