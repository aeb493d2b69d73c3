"""Postgres up but busy is not an outage: a lock held past DATABASE_LOCK_TIMEOUT_SECONDS,
a statement past DATABASE_STATEMENT_TIMEOUT_SECONDS and a pool with no free connection
each answer a retryable 503 with their own code, `Retry-After` and a metric; only a
Postgres that cannot be reached answers `database_unavailable`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.conftest import AppFactory, Instance, Servers
from tests.factories import make_user
from tests.sessions.helpers import make_cast, make_pending_session, post_webhook, webhook_body
from tests.support.proxy import FaultProxy

from . import helpers
from .helpers import metric_sum, postgres_url_via

postgres_proxy_fixture = helpers.postgres_proxy_fixture


def assert_retryable(r: httpx.Response, code: str) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"] == code, r.text
    assert set(r.json()) == {"error", "detail"}
    assert r.headers["retry-after"] == "1"


@pytest.fixture
async def other(clean: Servers) -> AsyncIterator[asyncpg.Connection]:
    """Another Postgres client (no bounds of its own), to hold locks the app needs."""
    conn = await asyncpg.connect(clean.database_url)
    yield conn
    await conn.close()


async def test_a_lock_held_past_the_lock_timeout_answers_503_lock_timeout(
    inst: Instance, other: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    async with other.transaction():
        await other.execute("SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE", sid)
        r = await post_webhook(inst, webhook_body(sid, "ref-locked"))
        assert_retryable(r, "lock_timeout")
        assert await metric_sum(inst, "halobestie_db_bounds_reached_total", bound="lock_timeout")
        assert not await metric_sum(inst, "halobestie_db_pool_exhausted_total")
    # Retried once the lock is free, the same delivery succeeds.
    r = await post_webhook(inst, webhook_body(sid, "ref-locked"))
    assert r.status_code == 200 and r.json()["session"]["status"] == "active", r.text


@pytest.fixture
async def slow_payments(other: asyncpg.Connection) -> AsyncIterator[None]:
    """Every insert into `payments` takes 3 s (longer than the statement timeout that
    DATABASE_TIMEOUT_SECONDS=2 implies). Test-only; removed afterwards."""
    await other.execute(
        """
        CREATE OR REPLACE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
        CREATE TRIGGER test_slow_payment BEFORE INSERT ON payments
            FOR EACH ROW EXECUTE FUNCTION test_slow_insert();
        """
    )
    try:
        yield
    finally:
        await other.execute(
            "DROP TRIGGER IF EXISTS test_slow_payment ON payments;"
            " DROP FUNCTION IF EXISTS test_slow_insert();"
        )


async def test_a_statement_past_the_statement_timeout_answers_503_statement_timeout(
    inst: Instance, pg: asyncpg.Connection, slow_payments: None
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    r = await post_webhook(inst, webhook_body(sid, "ref-slow"))
    assert_retryable(r, "statement_timeout")
    assert await metric_sum(inst, "halobestie_db_bounds_reached_total", bound="statement_timeout")
    # Cancelled by Postgres, rolled back whole: nothing half-paid.
    assert await pg.fetchval("SELECT status FROM chat_sessions WHERE id = $1", sid) == (
        "pending_payment"
    )
    assert await pg.fetchval("SELECT count(*) FROM payments") == 0


async def test_a_saturated_pool_answers_503_overloaded_not_database_unavailable(
    make_app: AppFactory,
) -> None:
    async with make_app(DATABASE_POOL_SIZE=1) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        async with inst.ctx.db.connection():  # the one connection, busy elsewhere
            r = await inst.client.get("/api/mitra/status", headers=mitra.headers)
            assert_retryable(r, "overloaded")
        assert await metric_sum(inst, "halobestie_db_pool_exhausted_total") == 1
        r = await inst.client.get("/api/mitra/status", headers=mitra.headers)
        assert r.status_code == 200, r.text


async def test_an_unreachable_postgres_answers_database_unavailable_even_with_a_full_pool(
    make_app: AppFactory, clean: Servers, postgres_proxy: FaultProxy
) -> None:
    async with make_app(
        DATABASE_URL=postgres_url_via(clean, postgres_proxy), DATABASE_POOL_SIZE=1
    ) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        try:
            await postgres_proxy.cut()  # connections refused
            answers = await asyncio.gather(
                *(inst.client.get("/api/mitra/status", headers=mitra.headers) for _ in range(5))
            )
            for r in answers:
                assert_retryable(r, "database_unavailable")
            await postgres_proxy.blackhole()  # connections accepted, nothing comes back
            r = await inst.client.get("/api/mitra/status", headers=mitra.headers)
            assert_retryable(r, "database_unavailable")
            assert not await metric_sum(inst, "halobestie_db_pool_exhausted_total")
        finally:
            await postgres_proxy.restore()
