"""Alembic environment: plain SQL migrations run through SQLAlchemy's asyncpg driver."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = config.attributes["sqlalchemy_url"]
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            # Two instances migrating at once: the advisory lock makes the second wait
            # and then find nothing to do, instead of failing on a duplicate table.
            await connection.exec_driver_sql("SELECT pg_advisory_lock(727272)")
            await connection.run_sync(_run)
            await connection.commit()
            await connection.exec_driver_sql("SELECT pg_advisory_unlock(727272)")
    finally:
        await engine.dispose()


if context.is_offline_mode():  # pragma: no cover - we never generate offline SQL
    raise SystemExit("offline migrations are not supported")
asyncio.run(_main())
