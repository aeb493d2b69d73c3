"""Postgres access: one asyncpg pool, the bounds Postgres enforces on each of its
connections, and the translation of what goes wrong into the domain's retryable errors
at one place:

* Postgres unreachable (connect refused or timed out, connection lost) -> DatabaseUnavailable;
* every pooled connection busy for DATABASE_TIMEOUT_SECONDS -> Overloaded;
* a lock wait past DATABASE_LOCK_TIMEOUT_SECONDS (55P03) -> LockTimeout;
* a statement past DATABASE_STATEMENT_TIMEOUT_SECONDS (57014) -> StatementTimeout;
* a transaction Postgres aborted for a conflicting one, a deadlock (40P01) or a
  serialization failure (40001) -> ConflictRetry.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Self

import asyncpg

from .errors import (
    ConflictRetry,
    DatabaseUnavailable,
    DomainError,
    LockTimeout,
    Overloaded,
    StatementTimeout,
)
from .logs import get_logger
from .metrics import Metrics
from .pghosts import connect

log = get_logger(__name__)
Isolation = Literal["read_committed", "repeatable_read", "serializable"]

# What "Postgres is down or unreachable" looks like through asyncpg. Query errors
# (constraint violations, syntax) are deliberately absent: those are bugs or 4xx. A
# connection that Postgres cut for idling in a transaction (a process that was frozen)
# reads as InterfaceError "connection is closed" when it thaws: also here.
UNREACHABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.IdleInTransactionSessionTimeoutError,
    # Failover (pghosts.py): every host that answered is a standby (the gap before a
    # promotion), or a connection opened earlier is now on a read-only server (25006, an
    # old primary fenced read-only): both retryable, and the pool's connections expire.
    asyncpg.TargetServerAttributeNotMatched,
    asyncpg.ReadOnlySQLTransactionError,
)
# asyncpg's refusal to encode a query argument (a str with a lone surrogate, a value of
# the wrong type): the caller's input, not an outage. It subclasses InterfaceError, so
# `connection` lets it through before catching UNREACHABLE; api/errors.py answers it 422.
InvalidArgument = asyncpg.exceptions._base.DataError
# Postgres aborted a transaction so that a conflicting one could go on: a deadlock (it
# picks one victim after deadlock_timeout, 1 s by default) or a serialization failure
# (REPEATABLE READ / SERIALIZABLE). Lock orders are documented to avoid the first; either
# is retryable as it stands, never a bug of the request.
CONFLICT_ABORTED: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)
# Postgres is up and refused to go on with this transaction: the bounds below reached,
# or the transaction aborted for a conflicting one. Every one is a retryable 503.
BOUND_REACHED: tuple[type[Exception], ...] = (
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,
    *CONFLICT_ABORTED,
)


class RowModel:
    """Base of the frozen dataclasses a feature makes from its table's rows (issue 10's
    typed rows): the fields are exactly the columns its statement selects (the owning
    module's `*_COLUMNS`), so `from_row` is `cls(**row)` and a column added to one but
    not the other is a TypeError at the first read, not a silent `Any`."""

    __slots__ = ()

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Self:
        """From a record holding exactly the fields (TypeError otherwise)."""
        return cls(**row)

    @classmethod
    def from_written(cls, row: asyncpg.Record | None) -> Self:
        """From what an INSERT ... RETURNING, or an UPDATE ... RETURNING of a row the
        transaction holds locked, returned: the row is there (None would be a bug in the
        caller, raised as RuntimeError)."""
        if row is None:
            raise RuntimeError(f"a write of a new or locked {cls.__name__} returned no row")
        return cls.from_row(row)


@dataclass(frozen=True)
class Bounds:
    """What Postgres enforces on every pooled connection, in seconds (config.py sizes
    them: idle_in_transaction < lock < statement < the client's timeout)."""

    statement: float
    lock: float
    idle_in_transaction: float

    def server_settings(self, *, pooled: bool = False) -> dict[str, str]:
        """Sent at connect; asyncpg's RESET ALL on release keeps them (they are the
        session's defaults), so a `SET` for one long job ends with its checkout.

        `pooled` (through PgBouncer in transaction mode): application_name alone, which
        PgBouncer tracks per client and sets on whichever server connection runs the
        transaction. It refuses the others at connect ("unsupported startup parameter"),
        and could not keep them per client anyway: behind it the bounds come from the
        role's settings (`pooled_bounds_sql`, checked at open)."""
        bounds = {} if pooled else self.settings_ms()
        return {**bounds, "application_name": application_name()}

    def pooled_bounds_sql(self, role: str = "<app role>") -> str:
        """What an operator runs once behind a transaction pooler, so that every server
        connection enforces these bounds (they then apply to the role's sessions)."""
        return " ".join(
            f"ALTER ROLE {role} SET {name} = '{value}ms';"
            for name, value in self.settings_ms().items()
        )

    def settings_ms(self) -> dict[str, str]:
        """The three bounds as Postgres settings, in milliseconds."""
        return {
            "statement_timeout": _ms(self.statement),
            "lock_timeout": _ms(self.lock),
            "idle_in_transaction_session_timeout": _ms(self.idle_in_transaction),
        }


# Backends of the app's pools; stalls.py terminates stalled ones by this name.
APPLICATION_NAME_PREFIX = "halobestie pid="


def application_name(role: str = "") -> str:
    """Who holds what, in pg_stat_activity and pg_locks: `halobestie pid=<pid>
    host=<host>` for the pools, `halobestie <role> pid=...` for other connections
    (Postgres keeps 63 bytes). Without it a stalled instance holding locks is one
    anonymous backend among many."""
    who = f"halobestie {role} " if role else "halobestie "
    return f"{who}pid={os.getpid()} host={socket.gethostname()}"


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def bound_reached(exc: Exception) -> DomainError:
    """The domain error for one of BOUND_REACHED (55P03, 57014, 40P01 or 40001)."""
    if isinstance(exc, CONFLICT_ABORTED):
        return ConflictRetry(
            "the database aborted this for a conflicting change (deadlock or serialization"
            " failure); nothing was written, try again"
        )
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return LockTimeout("a lock stayed held by another transaction; try again shortly")
    return StatementTimeout("the database did not finish this in time; try again shortly")


# Behind a transaction pooler, the direct connections each instance keeps for `direct()`
# (the seed and the drift report: serialised by the seed lock, so two are plenty); plus
# the timer runner's LISTEN and the stall reaper, each one connection of its own.
DIRECT_POOL_SIZE = 2
POOLED_BOUNDS_SQL = "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])"


class Database:
    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int,
        timeout: float,
        bounds: Bounds | None = None,
        metrics: Metrics | None = None,
        statement_cache_size: int = 100,
        direct_dsn: str | None = None,
    ) -> None:
        """`direct_dsn` (DATABASE_DIRECT_URL), when it differs from `dsn`: `dsn` goes
        through a transaction pooler (PgBouncer), and `direct()` checks connections out of
        a small pool of its own on `direct_dsn`, for session-level advisory locks."""
        self._dsn = dsn
        self._statement_cache_size = statement_cache_size
        self._pooled = direct_dsn is not None and direct_dsn != dsn
        self._direct: Database | None = None
        if self._pooled and direct_dsn is not None:
            self._direct = Database(
                direct_dsn,
                pool_size=DIRECT_POOL_SIZE,
                timeout=timeout,
                bounds=bounds,
                metrics=metrics,
                statement_cache_size=statement_cache_size,
            )
        self._pool_size = pool_size
        self._timeout = timeout
        self._bounds = bounds
        self._metrics = metrics
        self._pool: asyncpg.Pool | None = None
        # One slot per pooled connection, taken before asking the pool: waiting for a
        # slot is waiting for a busy pool (Overloaded), while the pool's own acquire then
        # only ever waits to connect (DatabaseUnavailable). asyncpg's acquire timeout
        # covers both and cannot tell them apart.
        self._slots = asyncio.Semaphore(pool_size)
        # Whether the last attempt to use Postgres failed as unreachable: a slot wait
        # that runs out during an outage is the outage, not a busy pool.
        self._unreachable = False

    async def open(self, *, wait: float = 0.0) -> None:
        """Opens the pool (and the direct pool behind a pooler). Postgres unreachable
        (UNREACHABLE: refused, timed out, starting up) is retried until `wait` seconds
        have passed (DATABASE_STARTUP_WAIT_SECONDS at startup), each attempt logged:
        an app started beside its Postgres (a compose file, a reboot) or on a box so
        loaded that one connect outlasts DATABASE_TIMEOUT_SECONDS waits instead of
        exiting. Raises what the last attempt raised; a pooler refusing the bounds says
        which setting is missing (never retried: waiting does not fix a setting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._open_checked()
                return
            except UNREACHABLE as exc:
                left = deadline - loop.time()
                if left <= 0:
                    raise
                pause = min(2.0, 0.25 * 2 ** (attempt - 1), left)
                # The error's class only: its text may carry the DSN's host and user.
                log.warning(
                    "waiting_for_postgres",
                    attempt=attempt,
                    error=type(exc).__name__,
                    retry_in_seconds=round(pause, 2),
                    gives_up_in_seconds=round(left, 1),
                )
                await asyncio.sleep(pause)

    async def _open_checked(self) -> None:
        try:
            await self._open_pool()
        except asyncpg.ProtocolViolationError as exc:
            if "unsupported startup parameter" not in str(exc):
                raise
            raise RuntimeError(
                f"{exc}: DATABASE_URL goes through a pooler in transaction mode (PgBouncer);"
                " set DATABASE_DIRECT_URL to the server itself (docs/subsystems/failures.md,"
                " PgBouncer)"
            ) from exc

    async def _open_pool(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            # Several hosts in DATABASE_URL: each new connection finds the writable one.
            connect=connect,
            timeout=self._timeout,
            command_timeout=self._timeout,
            # Reset state cheaply; sessions here never leave temp objects behind.
            max_inactive_connection_lifetime=60,
            server_settings=(
                self._bounds.server_settings(pooled=self._pooled) if self._bounds else None
            ),
            statement_cache_size=self._statement_cache_size,
        )
        if self._direct is not None:
            try:
                await self._direct.open()
                await self._check_pooled_bounds()
            except BaseException:
                await self.close()
                raise

    async def _check_pooled_bounds(self) -> None:
        """Behind a pooler the bounds are the role's settings: warn, naming the fix, when
        the server connections do not enforce the configured ones (a stalled holder would
        then keep its locks, and slow statements would surface as the client's timeout)."""
        if self._bounds is None:
            return
        want = self._bounds.settings_ms()
        async with self.connection() as conn:
            rows = await conn.fetch(POOLED_BOUNDS_SQL, list(want))
            role = await conn.fetchval("SELECT current_user")
        have = {row["name"]: row["setting"] for row in rows}
        if have != want:
            log.warning(
                "postgres_bounds_not_enforced",
                detail="behind a pooler the bounds are the role's settings; run once:",
                fix=self._bounds.pooled_bounds_sql(role),
                want=want,
                have=have,
            )

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def saturated(self) -> bool:
        """Whether every pooled connection is taken (a caller now waits for a free one)."""
        return self._slots.locked()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("the database pool is not open")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection. Raises DatabaseUnavailable (unreachable), Overloaded (no
        connection free within DATABASE_TIMEOUT_SECONDS), LockTimeout, StatementTimeout,
        ConflictRetry (deadlock or serialization failure).

        On an unreachable Postgres every idle connection is expired, so that once
        Postgres is back the next requests reconnect instead of tripping over dead sockets.
        """
        pool = self.pool
        await self._take_slot()
        try:
            async with pool.acquire(timeout=self._timeout) as conn:
                self._unreachable = False
                yield conn
        except InvalidArgument:
            raise
        except UNREACHABLE as exc:
            self._unreachable = True
            await pool.expire_connections()
            log.warning("postgres_unreachable", error=type(exc).__name__)
            raise DatabaseUnavailable("Postgres is unreachable; try again shortly") from exc
        except BOUND_REACHED as exc:
            error = bound_reached(exc)
            if self._metrics is not None:
                self._metrics.db_bounds_reached.labels(bound=error.code).inc()
            log.warning("postgres_bound_reached", error=error.code, detail=str(exc))
            raise error from exc
        finally:
            self._slots.release()

    async def _take_slot(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            if self._unreachable:
                raise DatabaseUnavailable("Postgres is unreachable; try again shortly") from None
            if self._metrics is not None:
                self._metrics.db_pool_exhausted.inc()
            log.warning("postgres_pool_exhausted", pool_size=self._pool_size)
            raise Overloaded("every database connection stayed busy; try again shortly") from None

    @asynccontextmanager
    async def direct(self) -> AsyncIterator[Any]:
        """A connection whose server session is this caller's for the whole checkout,
        for session-level advisory locks held across awaits (the seed lock): from the
        direct pool when `dsn` goes through a transaction pooler, else a pooled
        connection. Raises as `connection`."""
        source = self._direct if self._direct is not None else self
        async with source.connection() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self, isolation: Isolation = "read_committed") -> AsyncIterator[Any]:
        async with self.connection() as conn, conn.transaction(isolation=isolation):
            yield conn
