"""A process stalled while it holds a session-level advisory lock (the seed lock that every
mirror write waits for) is idle to Postgres, which never times that out. The running
app's stall reaper (stalls.py) terminates it after DATABASE_TIMEOUT_SECONDS; until then
the writes that wait for it answer a retryable 503 lock_timeout, never an outage."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg

from halobestie.availability import locks
from halobestie.db import APPLICATION_NAME_PREFIX
from tests.conftest import AppFactory, Instance, Servers, eventually
from tests.factories import make_user

from .helpers import metric_sum


async def test_an_idle_holder_of_the_seed_lock_is_terminated_and_mirror_writes_resume(
    make_app: AppFactory, clean: Servers, valkey: Any
) -> None:
    # The reaper runs where sweeps or timers do (their cadences are long: none runs here).
    async with make_app(SWEEPS_ENABLED=True) as inst:
        await _holder_is_reaped(inst, clean, valkey)


async def _holder_is_reaped(inst: Instance, clean: Servers, valkey: Any) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    # What a frozen instance looks like to Postgres: one of the app's backends (by its
    # application_name), idle, holding the seed lock exclusively, never coming back.
    holder = await asyncpg.connect(
        clean.database_url,
        server_settings={"application_name": f"{APPLICATION_NAME_PREFIX}{os.getpid()} frozen"},
    )
    try:
        await holder.execute(
            "SELECT pg_advisory_lock($1::int, $2::int)", locks.NAMESPACE, locks.SEED
        )
        started = asyncio.get_running_loop().time()
        # Committed in Postgres; its mirror write waits for the seed lock and gives up:
        # counted, never a 5xx for a committed write (aftercommit.py).
        r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
        assert r.status_code == 200 and r.json() == {"is_online": True}, r.text
        failures = await metric_sum(
            inst, "halobestie_after_commit_failures_total", effect="mirror_mitras"
        )
        assert failures == 1

        await eventually(holder.is_closed, within=5)
        # DATABASE_TIMEOUT_SECONDS (2 in the tests), one look more, and slack.
        settings = inst.ctx.settings
        bound = settings.database_timeout_seconds + settings.idle_in_transaction_bound / 4
        assert asyncio.get_running_loop().time() - started < bound + 1.5
        assert (
            await metric_sum(
                inst,
                "halobestie_db_stalled_backends_terminated_total",
                kind="idle_holding_advisory_lock",
            )
            == 1
        )
    finally:
        holder.terminate()

    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    assert await valkey.sismember(inst.ctx.keys.online, str(mitra.id))
