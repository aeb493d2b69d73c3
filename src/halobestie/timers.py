"""Durable timers: offer expiry, payment timeout, session expiry.

Each timer is a row in `timers` (kind, ref_id, due_at). Whoever schedules it does so in
the same transaction as the state it guards, so a timer exists exactly when its state
does. Firing claims one due row with `FOR UPDATE SKIP LOCKED`, runs the kind's handler in
the same transaction and marks the row fired: with several instances each timer fires
once; a `kill -9` mid-fire rolls the whole thing back and the timer fires later instead.
An instance frozen mid-fire (SIGSTOP, a VM pause) holds its locks only until Postgres
cuts its idle transaction (DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS); the row is then
free and a live instance fires it.

Cadence without a tight poll: the runner sleeps until the earliest due time, and a
`pg_notify` sent when a timer is scheduled wakes every instance to recompute that
deadline. With nothing due it still checks every `IDLE_CHECK_SECONDS` (a notification can
be lost while a listener reconnects).

Startup order is fixed (SPEC §1): restore timers -> seed Valkey -> serve. The restore
fires whatever fell due while no instance was running, so the seed reads settled truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg

from ..context import Context
from ..db import BOUND_REACHED, UNREACHABLE
from ..errors import ServiceUnavailable
from ..logs import get_logger

log = get_logger(__name__)

TimerKind = Literal["offer_expiry", "payment_timeout", "session_expiry"]
CHANNEL = "halobestie_timers"
IDLE_CHECK_SECONDS = 5.0
# A due timer this instance could not take is being fired by another instance (its row
# is locked): look again shortly instead of spinning on it.
LOCKED_ELSEWHERE_RETRY_SECONDS = 0.1
RETRY_FAILED_AFTER = timedelta(seconds=5)
# Postgres going away, or one of its bounds reached (a session locked past
# DATABASE_LOCK_TIMEOUT_SECONDS), is not the handler's fault: the firing rolls back and
# the runner retries it shortly, instead of deferring it as a failed handler.
PASS_THROUGH: tuple[type[Exception], ...] = (ServiceUnavailable, *UNREACHABLE, *BOUND_REACHED)

# What a handler returns: work to run after its transaction commits (capacity
# recompute, events), never inside it.
AfterCommit = Callable[[], Awaitable[None]]
Handler = Callable[[Context, Any, UUID, datetime], Awaitable[list[AfterCommit]]]


async def run_after_commit(effects: Iterable[AfterCommit]) -> None:
    """The commit is done: a failing side effect is logged, never turned into an error
    for a write that happened (capacity heals with the next transition or reseed;
    events are hints a client re-fetches over REST)."""
    for effect in effects:
        try:
            await effect()
        except Exception:
            log.exception("after_commit_failed")


_handlers: dict[str, Handler] = {}


def register_timer_handler(kind: TimerKind, handler: Handler) -> None:
    _handlers[kind] = handler


async def schedule_timer(conn: Any, kind: TimerKind, ref_id: UUID, due_at: datetime) -> None:
    """Create or move the timer; call inside the transaction that creates its state."""
    await conn.execute(
        "INSERT INTO timers (kind, ref_id, due_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (kind, ref_id) DO UPDATE SET due_at = EXCLUDED.due_at, fired_at = NULL",
        kind,
        ref_id,
        due_at,
    )
    # Delivered at commit: other instances recompute their next deadline.
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, kind)


async def cancel_timer(conn: Any, kind: TimerKind, ref_id: UUID) -> None:
    await conn.execute(
        "DELETE FROM timers WHERE kind = $1 AND ref_id = $2 AND fired_at IS NULL", kind, ref_id
    )


# One due row, claimed for the length of one transition: a row another instance is
# firing is skipped, never waited for.
CLAIM_SQL = """
SELECT id, kind, ref_id FROM timers
WHERE fired_at IS NULL AND due_at <= $1
ORDER BY due_at LIMIT 1
FOR UPDATE SKIP LOCKED
"""


async def run_due_timers(ctx: Context, now: datetime) -> int:
    """Fire every timer due at `now`; returns how many fired. Safe to run on several
    instances at once (each row is taken by one).

    Each timer fires in a transaction of its own: its row and the state it guards are
    locked only for that one transition (a batch in one transaction would keep the
    first session locked, and its payment webhook waiting, until the last had fired).
    Raises DatabaseUnavailable / DatabaseBusy: what fired before stays fired."""
    fired = 0
    while True:
        effects: list[AfterCommit] = []
        async with ctx.db.transaction() as conn:
            row = await conn.fetchrow(CLAIM_SQL, now)
            if row is None:
                return fired
            handler = _handlers.get(row["kind"])
            try:
                async with conn.transaction():  # a savepoint: a failing handler leaves no trace
                    done = await handler(ctx, conn, row["ref_id"], now) if handler else []
                    await conn.execute(
                        "UPDATE timers SET fired_at = $2 WHERE id = $1", row["id"], now
                    )
            except PASS_THROUGH:
                raise
            except Exception:
                # A handler bug must not wedge the queue: retry this one later.
                log.exception("timer_failed", kind=row["kind"], ref_id=str(row["ref_id"]))
                await conn.execute(
                    "UPDATE timers SET due_at = $2 WHERE id = $1",
                    row["id"],
                    now + RETRY_FAILED_AFTER,
                )
            else:
                effects = done
                fired += 1
        await run_after_commit(effects)


async def next_due(ctx: Context) -> datetime | None:
    async with ctx.db.connection() as conn:
        due: datetime | None = await conn.fetchval(
            "SELECT min(due_at) FROM timers WHERE fired_at IS NULL"
        )
    return due


class TimerRunner:
    """Fires timers at their due time, woken early by notifications."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Checked by the loops as well as cancelling them: on 3.11, asyncio.wait_for
        # (used inside asyncpg) can swallow a cancel, and stop() would wait forever.
        self._stopping = False
        self._listen_closed = asyncio.Event()

    def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._run(), name="timers"),
            asyncio.create_task(self._listen(), name="timers-listen"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._listen_closed.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            delay = IDLE_CHECK_SECONDS
            try:
                now = self.ctx.clock.now()
                await run_due_timers(self.ctx, now)
                due = await next_due(self.ctx)
                if due is not None and due <= now:
                    # Due by the time we looked, yet not taken: locked by another
                    # instance firing it. Not a tight loop meanwhile.
                    delay = LOCKED_ELSEWHERE_RETRY_SECONDS
                elif due is not None:
                    delay = min(delay, (due - self.ctx.clock.now()).total_seconds())
            except ServiceUnavailable as exc:  # Postgres down or busy: not a bug
                log.warning("timers_deferred", error=exc.code)
                delay = 1.0
            except Exception:
                log.exception("timer_loop_failed")
                delay = 1.0
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # lands as the wake-up fires, and stop() would then wait forever.
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection; reconnects after Postgres outages.

        A connection that dies without a FIN/RST (a partition, a failed-over host) never
        reports its end, so it is also probed every IDLE_CHECK_SECONDS."""
        timeout = self.ctx.settings.database_timeout_seconds
        while not self._stopping:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.ctx.settings.asyncpg_dsn, timeout=timeout)
                self._listen_closed = closed = asyncio.Event()
                if self._stopping:
                    break
                conn.add_termination_listener(lambda _, done=closed: done.set())
                await conn.add_listener(CHANNEL, lambda *_: self._wake.set())
                self._wake.set()  # we may have missed notifications while away
                while not closed.is_set():
                    try:
                        async with asyncio.timeout(IDLE_CHECK_SECONDS):
                            await closed.wait()
                    except TimeoutError:
                        await conn.execute("SELECT 1", timeout=timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the listener die: Postgres will be back
                if not isinstance(exc, UNREACHABLE):
                    log.warning("timer_listen_failed", error=repr(exc))
                await asyncio.sleep(1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # close() could wait forever on a dead link


# -- startup hook ----------------------------------------------------------------------

Restorer = Callable[[Context, datetime], Awaitable[None]]
_restorers: list[Restorer] = []


def register_restorer(restorer: Restorer) -> None:
    if restorer not in _restorers:
        _restorers.append(restorer)


async def _fire_overdue(ctx: Context, now: datetime) -> None:
    fired = await run_due_timers(ctx, now)
    if fired:
        log.info("timers_restored", fired=fired)


register_restorer(_fire_overdue)


async def restore_timers(ctx: Context, now: datetime) -> int:
    """Run every registered restorer in registration order; returns how many ran."""
    for restorer in _restorers:
        await restorer(ctx, now)
    return len(_restorers)
