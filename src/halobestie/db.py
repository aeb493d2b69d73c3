"""Postgres access: one asyncpg pool, and the translation of "Postgres is unreachable"
into `DatabaseUnavailable` (503) at one place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg

from .errors import DatabaseUnavailable
from .logs import get_logger

log = get_logger(__name__)
Isolation = Literal["read_committed", "repeatable_read", "serializable"]

# What "Postgres is down or unreachable" looks like through asyncpg. Query errors
# (constraint violations, syntax) are deliberately absent: those are bugs or 4xx.
UNREACHABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
# asyncpg's refusal to encode a query argument (a str with a lone surrogate, a value of
# the wrong type): the caller's input, not an outage. It subclasses InterfaceError, so
# `connection` lets it through before catching UNREACHABLE; api/errors.py answers it 422.
InvalidArgument = asyncpg.exceptions._base.DataError


class Database:
    def __init__(self, dsn: str, *, pool_size: int, timeout: float) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            timeout=self._timeout,
            command_timeout=self._timeout,
            # Reset state cheaply; sessions here never leave temp objects behind.
            max_inactive_connection_lifetime=60,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("the database pool is not open")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection; unreachable Postgres becomes DatabaseUnavailable.

        On such a failure every idle connection is expired, so that once Postgres is
        back the next requests reconnect instead of tripping over dead sockets.
        """
        pool = self.pool
        try:
            async with pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except InvalidArgument:
            raise
        except UNREACHABLE as exc:
            await pool.expire_connections()
            log.warning("postgres_unreachable", error=type(exc).__name__)
            raise DatabaseUnavailable("Postgres is unreachable; try again shortly") from exc

    @asynccontextmanager
    async def transaction(self, isolation: Isolation = "read_committed") -> AsyncIterator[Any]:
        async with self.connection() as conn, conn.transaction(isolation=isolation):
            yield conn
