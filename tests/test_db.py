"""db.Database's translation of a transaction Postgres aborted for a conflicting one: a
deadlock (40P01) or a serialization failure (40001) is ConflictRetry, a retryable 503
`conflict_retry` with Retry-After, never a 500. Forced for real between two
transactions through the app's own wrapper, against the test Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest

from halobestie.api.errors import domain_error
from halobestie.db import Bounds, Database, bound_reached
from halobestie.errors import ConflictRetry, DatabaseBusy
from halobestie.metrics import Metrics
from tests.conftest import Servers

LOCK_ROW = "SELECT id FROM users WHERE id = $1 FOR UPDATE"


@pytest.fixture
async def db(clean: Servers) -> AsyncIterator[Database]:
    """The app's wrapper with the app's bounds; the lock timeout (3.5 s) stays above
    Postgres' deadlock_timeout (1 s), so the deadlock is what ends the wait."""
    database = Database(
        clean.database_url,
        pool_size=4,
        timeout=5,
        bounds=Bounds(statement=4, lock=3.5, idle_in_transaction=2),
        metrics=Metrics(),
    )
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def two_users(db: Database) -> tuple[UUID, UUID]:
    async with db.transaction() as conn:
        rows = await conn.fetch(
            "INSERT INTO users (email, password_hash, display_name, role)"
            " SELECT 'deadlock-' || n || '@example.com', 'x', 'U', 'customer'"
            " FROM generate_series(1, 2) AS n RETURNING id"
        )
    return rows[0]["id"], rows[1]["id"]


async def test_a_deadlock_between_two_transactions_is_a_retryable_conflict(db: Database) -> None:
    first, second = await two_users(db)
    both_hold_one = asyncio.Barrier(2)

    async def lock_in_order(a: UUID, b: UUID) -> str:
        async with db.transaction() as conn:
            await conn.execute(LOCK_ROW, a)
            await both_hold_one.wait()
            await conn.execute(LOCK_ROW, b)  # each waits for the other: 40P01 for one
            await conn.execute("UPDATE users SET display_name = 'won' WHERE id = $1", a)
        return "committed"

    outcomes = await asyncio.wait_for(
        asyncio.gather(
            lock_in_order(first, second), lock_in_order(second, first), return_exceptions=True
        ),
        timeout=10,
    )
    conflicts = [o for o in outcomes if isinstance(o, ConflictRetry)]
    assert len(conflicts) == 1, outcomes
    assert outcomes.count("committed") == 1, outcomes
    assert isinstance(conflicts[0].__cause__, asyncpg.DeadlockDetectedError)
    assert isinstance(conflicts[0], DatabaseBusy)  # retry loops treat it as busy
    # The victim's transaction was rolled back whole; its connection went back usable.
    async with db.connection() as conn:
        won = await conn.fetchval(
            "SELECT count(*) FROM users WHERE display_name = 'won' AND id = ANY($1::uuid[])",
            [first, second],
        )
    assert won == 1


async def test_a_serialization_failure_is_a_retryable_conflict(db: Database) -> None:
    user, _ = await two_users(db)
    with pytest.raises(ConflictRetry) as raised:
        async with db.transaction("repeatable_read") as stale:
            await stale.fetchval("SELECT 1")  # the snapshot is taken here
            async with db.transaction() as conn:
                await conn.execute("UPDATE users SET display_name = 'first' WHERE id = $1", user)
            # A row changed since the snapshot: 40001 under REPEATABLE READ.
            await stale.execute("UPDATE users SET display_name = 'second' WHERE id = $1", user)
    assert isinstance(raised.value.__cause__, asyncpg.SerializationError)
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT display_name FROM users WHERE id = $1", user) == "first"


@pytest.mark.parametrize(
    "raw", [asyncpg.DeadlockDetectedError("deadlock"), asyncpg.SerializationError("conflict")]
)
def test_a_conflict_answers_503_conflict_retry_with_retry_after(raw: Exception) -> None:
    # The same mapping for one translated by db.connection and for a raw one that
    # reaches the error handlers or the hot path untranslated.
    status, body, headers = domain_error(bound_reached(raw))
    assert status == 503
    assert body["error"] == "conflict_retry"
    assert headers["Retry-After"] == "1"
