"""Alembic environment: plain SQL migrations run through SQLAlchemy's asyncpg driver."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from halobestie.pghosts import connect

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    dsn = config.attributes["asyncpg_dsn"]
    timeout = config.attributes["connect_timeout"]
    # asyncpg parses the DSN, as for the app's pool: one or several hosts, the writable one.
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: connect(dsn, timeout=timeout)
    )
    try:
        async with engine.connect() as connection:
            # Two instances migrating at once: the advisory lock makes the second wait
            # and then find nothing to do, instead of failing on a duplicate table. A
            # session-level lock in separate statements: the CLI migrates through
            # DATABASE_DIRECT_URL, never through a pooler in transaction mode.
            await connection.exec_driver_sql("SELECT pg_advisory_lock(727272)")
            await connection.run_sync(_run)
            await connection.commit()
            await connection.exec_driver_sql("SELECT pg_advisory_unlock(727272)")
    finally:
        await engine.dispose()


if context.is_offline_mode():  # pragma: no cover - we never generate offline SQL
    raise SystemExit("offline migrations are not supported")
asyncio.run(_main())
