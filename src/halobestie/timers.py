"""Durable timers: offer expiry, payment timeout, session expiry, session warnings (the
engine; what each kind does lives with its feature).

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

The kinds and their handlers are one table, `runtime.timer_handlers()`, built at startup
and provided to the context (`HANDLERS`); nothing registers itself by being imported. A
due timer whose kind has no handler here is never claimed: it stays unfired (for an
instance that knows it, e.g. during a rolling deploy), and is logged and counted
(`halobestie_timers_unhandled_due`) instead of being silently marked fired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg

from .aftercommit import AfterCommit, run_after_commit
from .context import Context, Slot
from .db import BOUND_REACHED, UNREACHABLE
from .errors import ServiceUnavailable
from .logs import get_logger
from .pghosts import connect

log = get_logger(__name__)

TimerKind = Literal["offer_expiry", "payment_timeout", "session_expiry", "session_warning"]
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

# A handler runs inside the firing transaction (which holds the timer row) and returns
# its effects, run after that transaction commits (aftercommit.py), never inside it.
Handler = Callable[[Context, Any, UUID, datetime], Awaitable[list[AfterCommit]]]
# The table of kinds and handlers, built once by the runtime (`runtime.timer_handlers`).
HANDLERS: Slot[Mapping[TimerKind, Handler]] = Slot("timer handlers")


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


# One due row of a kind this instance can fire, claimed for the length of one
# transition: a row another instance is firing is skipped, never waited for.
CLAIM_SQL = """
SELECT id, kind, ref_id FROM timers
WHERE fired_at IS NULL AND due_at <= $1 AND kind = ANY($2::text[])
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
    handlers = ctx.get(HANDLERS)
    kinds = sorted(handlers)
    fired = 0
    while True:
        effects: list[AfterCommit] = []
        async with ctx.db.transaction() as conn:
            row = await conn.fetchrow(CLAIM_SQL, now, kinds)
            if row is None:
                return fired
            handler = handlers[row["kind"]]
            try:
                async with conn.transaction():  # a savepoint: a failing handler leaves no trace
                    done = await handler(ctx, conn, row["ref_id"], now)
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
        await run_after_commit(ctx, effects)


# Two index walks of timers_pending_idx in one round trip: the next due time of a kind
# this instance fires, and how many due timers no handler here fires (normally none).
NEXT_DUE_SQL = """
SELECT (SELECT min(due_at) FROM timers WHERE fired_at IS NULL AND kind = ANY($1::text[])),
       (SELECT count(*) FROM timers
         WHERE fired_at IS NULL AND due_at <= $2 AND kind <> ALL($1::text[]))
"""
UNHANDLED_KINDS_SQL = """
SELECT DISTINCT kind FROM timers
WHERE fired_at IS NULL AND due_at <= $2 AND kind <> ALL($1::text[]) ORDER BY kind
"""


async def next_due(ctx: Context, now: datetime) -> tuple[datetime | None, int]:
    """(the earliest due time of a kind this instance fires, None when there is none;
    how many timers are due at `now` whose kind has no handler here)."""
    handlers = ctx.get(HANDLERS)
    async with ctx.db.connection() as conn:
        row = await conn.fetchrow(NEXT_DUE_SQL, sorted(handlers), now)
    return row[0], int(row[1])


async def report_unhandled(ctx: Context, now: datetime, unhandled: int, seen: int) -> None:
    """Publish the count of due timers no handler here fires (gauge), and log it with
    their kinds when it changed since `seen`, the count last reported."""
    ctx.metrics.timers_unhandled_due.set(unhandled)
    if unhandled and unhandled != seen:
        handlers = ctx.get(HANDLERS)
        async with ctx.db.connection() as conn:
            rows = await conn.fetch(UNHANDLED_KINDS_SQL, sorted(handlers), now)
        log.error("timers_unhandled", due=unhandled, kinds=[r["kind"] for r in rows])


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
        self._unhandled = 0

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
                due, unhandled = await next_due(self.ctx, now)
                await report_unhandled(self.ctx, now, unhandled, self._unhandled)
                self._unhandled = unhandled
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
                # DATABASE_DIRECT_URL: LISTEN needs a server session of its own, which a
                # pooler in transaction mode would hand to other clients between statements.
                conn = await connect(self.ctx.settings.direct_dsn, timeout=timeout)
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


# -- startup --------------------------------------------------------------------------


async def restore_timers(ctx: Context, now: datetime) -> int:
    """Fire every timer that fell due while no instance ran (before the seed: SPEC §1);
    returns how many fired. Due timers of a kind without a handler are reported."""
    fired = await run_due_timers(ctx, now)
    if fired:
        log.info("timers_restored", fired=fired)
    _, unhandled = await next_due(ctx, now)
    await report_unhandled(ctx, now, unhandled, 0)
    return fired
