"""The heartbeat: zero Postgres statements per ping while Valkey is up, and a full Postgres
guard (plus a direct write of last_heartbeat_at) while Valkey is down."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from halobestie.clock import iso, parse_iso
from tests.conftest import AppFactory, Instance, Servers
from tests.factories import Person, make_user
from tests.support.proxy import FaultProxy

from . import helpers
from .helpers import (
    availability_of,
    beacon,
    fallback_reads,
    heartbeat,
    online_mitra,
    state_of,
    valkey_url_via,
)

# The shared fixtures (requested by their short names).
valkey_fault_app_fixture = helpers.valkey_fault_app_fixture
valkey_proxy_fixture = helpers.valkey_proxy_fixture

# -- the guard during a Valkey outage ---------------------------------------------------


async def last_heartbeat_at(pg: asyncpg.Connection, mitra: Person) -> Any:
    return await pg.fetchval("SELECT last_heartbeat_at FROM mitras WHERE id = $1", mitra.id)


async def test_heartbeat_guard_asks_postgres_during_a_valkey_outage(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy, pg: asyncpg.Connection
) -> None:
    inst = valkey_fault_app
    admin = await make_user(inst.ctx, "admin")
    online = await online_mitra(inst)
    offline = await make_user(inst.ctx, "mitra")
    deactivated = await online_mitra(inst)
    r = await inst.client.patch(
        f"/api/admin/mitras/{deactivated.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    was = await last_heartbeat_at(pg, deactivated)

    await valkey_proxy.cut()
    inst.clock.advance(5)
    # Refused exactly as the Valkey guard would refuse, though Valkey cannot be asked.
    r = await heartbeat(inst, deactivated)
    assert r.status_code == 403 and r.json()["error"] == "mitra_deactivated", r.text
    assert not inst.ctx.mirror.reachable  # this really was the Postgres path
    r = await heartbeat(inst, offline)
    assert r.status_code == 409 and r.json()["error"] == "not_online", r.text
    assert await last_heartbeat_at(pg, deactivated) == was
    assert await last_heartbeat_at(pg, offline) is None

    r = await heartbeat(inst, online)
    assert r.status_code == 200, r.text
    assert r.json()["at"] == iso(inst.clock.now())
    assert await last_heartbeat_at(pg, online) == inst.clock.now()  # written straight through
    assert await fallback_reads(inst, "heartbeat") == 3


async def test_outage_heartbeats_keep_a_mitra_reachable_in_the_postgres_fallback(
    valkey_fault_app: Instance, valkey_proxy: FaultProxy
) -> None:
    """HEARTBEAT_STALE_SECONDS is 60. Both mitras go online at t0; only one pings during
    the outage, at t0+50 s. At t0+100 s the fallback must judge that ping fresh (it went to
    last_heartbeat_at) and the other mitra stale."""
    inst = valkey_fault_app
    customer = await make_user(inst.ctx, "customer")
    pinging = await online_mitra(inst)
    silent = await online_mitra(inst)

    await valkey_proxy.cut()
    inst.clock.advance(50)
    r = await heartbeat(inst, pinging)
    assert r.status_code == 200, r.text
    inst.clock.advance(50)
    assert await availability_of(inst, customer, pinging.id) == {
        "reachable": True,
        "available": True,
    }
    assert await availability_of(inst, customer, silent.id) == {
        "reachable": False,
        "available": False,
    }
    assert state_of(await beacon(inst)) == ("available", 1)
    assert inst.ctx.mirror.reachable is False


# -- zero statements on the hot path, counted by Postgres itself ------------------------

STATEMENT = re.compile(r"LOG:\s+(statement|execute [^:]*):")
ENTRY = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # a new entry: log_line_prefix %m


class StatementLog:
    """Counts the statements Postgres runs for the test database, from Postgres' own log.

    Method: `ALTER DATABASE <test db> SET log_statement = 'all'` before the app starts (so
    every connection of its pool logs every statement, simple or extended protocol), then a
    separate connection writes a begin and an end marker statement around the action. Each
    statement is logged when it starts, so once the end marker has returned, every
    statement the app ran during the action is in pgserver's log file (`<PGDATA>/log`),
    between the two markers. The setting is reset afterwards.
    """

    def __init__(self, log: Path, marker: asyncpg.Connection) -> None:
        self.log = log
        self.marker = marker

    async def during(self, action: Callable[[], Awaitable[None]]) -> list[str]:
        token = uuid.uuid4().hex
        start = self.log.stat().st_size
        await self.marker.execute(f"SELECT 'statements-begin-{token}'")
        await action()
        await self.marker.execute(f"SELECT 'statements-end-{token}'")
        with self.log.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        begin = text.index(f"statements-begin-{token}")
        section = text[begin : text.index(f"statements-end-{token}")]
        # Without the two marker entries; a statement's SQL may run over several lines.
        lines = section.splitlines()[1:-1]
        statements: list[str] = []
        for line in lines:
            if STATEMENT.search(line):
                statements.append(line)
            elif statements and not ENTRY.match(line):
                statements[-1] += "\n" + line
        return statements


@pytest.fixture
async def statement_log(clean: Servers) -> AsyncIterator[StatementLog]:
    if clean.pg_log is None:
        pytest.skip("needs the embedded Postgres to read its server log")
    database = urlsplit(clean.database_url).path.lstrip("/")
    admin = await asyncpg.connect(clean.database_url)
    try:
        await admin.execute(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
        marker = await asyncpg.connect(clean.database_url)  # logs too: opened after ALTER
        try:
            yield StatementLog(clean.pg_log, marker)
        finally:
            await marker.close()
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" RESET log_statement')
        await admin.close()


async def test_heartbeats_run_zero_postgres_statements(
    statement_log: StatementLog,
    make_app: AppFactory,
    clean: Servers,
    valkey_proxy: FaultProxy,
    valkey: Any,
) -> None:
    """Measured on the Postgres side (see StatementLog): the server's own statement log
    between two markers holds nothing from 100 heartbeats. Two positive controls prove the
    measurement can see this app: a status read, and heartbeats once Valkey is cut (the
    fallback writes last_heartbeat_at: exactly one UPDATE per ping)."""
    async with make_app(VALKEY_URL=valkey_url_via(clean, valkey_proxy)) as inst:
        mitra = await online_mitra(inst)
        # Positive control first: the measurement does see this app's statements.
        seen = await statement_log.during(lambda: _get_status(inst, mitra))
        assert seen, "the statement log saw nothing: the measurement is blind"

        async def pings() -> None:
            for _ in range(100):
                inst.clock.advance(1)
                r = await heartbeat(inst, mitra)
                assert r.status_code == 200, r.text

        assert await statement_log.during(pings) == []
        # The pings did land, in Valkey.
        stored = await valkey.get(inst.ctx.keys.heartbeat(mitra.id))
        assert parse_iso(stored) == inst.clock.now()

        # And the same measurement sees the fallback when Valkey is down.
        await valkey_proxy.cut()

        async def outage_pings() -> None:
            for _ in range(3):
                inst.clock.advance(1)
                r = await heartbeat(inst, mitra)
                assert r.status_code == 200, r.text

        seen = await statement_log.during(outage_pings)
        updates = [line for line in seen if "UPDATE mitras SET last_heartbeat_at" in line]
        assert len(updates) == 3, seen
        await valkey_proxy.restore()


async def test_beacon_polls_run_zero_postgres_statements(
    statement_log: StatementLog, make_app: AppFactory, valkey: Any
) -> None:
    """Served from the snapshot or recomputed from Valkey (the snapshot is deleted before
    every other poll), the beacon never asks Postgres. Same measurement as above."""
    async with make_app() as inst:
        for _ in range(2):
            await online_mitra(inst)

        async def polls() -> None:
            for i in range(50):
                if i % 2:
                    await valkey.delete(inst.ctx.keys.snapshot)
                assert state_of(await beacon(inst)) == ("available", 2)

        assert await statement_log.during(polls) == []


async def _get_status(inst: Instance, mitra: Person) -> None:
    r = await inst.client.get("/api/mitra/status", headers=mitra.headers)
    assert r.status_code == 200, r.text
