"""Stalled lock holders that Postgres' own bounds do not cut off.

`idle_in_transaction_session_timeout` frees the locks of a process that stalls (SIGSTOP,
a paused VM, a debugger) between two statements of a transaction. Two stalls escape it:

* mid-statement: asyncpg prepares a statement with Parse/Describe/Flush and sends
  Bind/Execute/Sync only once Postgres answered; a process frozen in between leaves its
  backend `active`, reading from its client, with the transaction's locks held and no
  timeout running (statement_timeout does not fire while a backend waits for its client);
* between transactions, holding a session-level advisory lock (the seed's, on a direct
  connection: availability/locks.py; the mirror writers' and the sweeps' locks are
  transaction-level, so the first bound covers them): `idle`, with no bound at all.

So every instance that runs sweeps or timers looks, every `interval` seconds, on a
connection of its own (the pool may be stuck behind those very locks; on
DATABASE_DIRECT_URL, since it must see and end server sessions), for backends of
the app (application_name `halobestie pid=...`, db.application_name) stalled in either
way, and terminates them (pg_terminate_backend, which a role may do to its own backends).
The stalled process finds its connection closed when it thaws (DatabaseUnavailable,
retried like an outage).

Bounds, counted by Postgres' clock:
* mid-statement: DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS since the statement began,
  and seen waiting for its client at two looks in a row (a healthy backend waits there
  for microseconds);
* idle holding an advisory lock: DATABASE_TIMEOUT_SECONDS (no holder is idle that long:
  the longest, the seed's Valkey write while it holds the seed lock, is ~2 s at 100k
  online mitras).
Cost: one query over pg_stat_activity per instance and interval (a quarter of the
idle-in-transaction bound: 0.5 s by default).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .db import APPLICATION_NAME_PREFIX, UNREACHABLE, application_name
from .logs import get_logger
from .metrics import Metrics
from .pghosts import connect

log = get_logger(__name__)

STALLED_SQL = """
SELECT a.pid, a.state, a.state_change, a.application_name,
       extract(epoch FROM now() - a.state_change)::float8 AS age,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted) AS advisory
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.application_name LIKE $1 || '%'
  AND a.wait_event_type = 'Client' AND a.wait_event = 'ClientRead'
  AND a.state IN ('active', 'idle')
"""


@dataclass(frozen=True)
class Stalled:
    pid: int
    kind: str  # "mid_statement" | "idle_holding_advisory_lock"
    application_name: str
    age: float  # seconds in that state


def pick_stalled(
    rows: list[Any], seen: dict[int, datetime], *, mid_statement: float, idle_holding: float
) -> list[Stalled]:
    """Which of STALLED_SQL's rows to terminate. `seen` maps the pids that were waiting
    mid-statement at the previous look to their state_change; it is updated in place."""
    stalled: list[Stalled] = []
    waiting: dict[int, datetime] = {}
    for row in rows:
        pid, state, since, age = row["pid"], row["state"], row["state_change"], row["age"]
        if state == "active":
            waiting[pid] = since
            if age > mid_statement and seen.get(pid) == since:
                stalled.append(Stalled(pid, "mid_statement", row["application_name"], age))
        elif row["advisory"] and age > idle_holding:
            stalled.append(Stalled(pid, "idle_holding_advisory_lock", row["application_name"], age))
    seen.clear()
    seen.update(waiting)
    return stalled


class StallReaper:
    """Runs `pick_stalled` every `interval` seconds until stopped; never dies."""

    def __init__(
        self,
        dsn: str,
        metrics: Metrics,
        *,
        mid_statement: float,
        idle_holding: float,
        timeout: float,
    ) -> None:
        self._dsn = dsn
        self._metrics = metrics
        self._mid_statement = mid_statement
        self._idle_holding = idle_holding
        self._timeout = timeout
        self.interval = mid_statement / 4
        self._seen: dict[int, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        # Checked as well as cancelling: on 3.11 a cancel can be swallowed by an
        # asyncio.wait_for inside asyncpg, and stop() would wait forever.
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="stall-reaper")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def reap(self, conn: Any) -> list[Stalled]:
        """One look; returns the backends it terminated."""
        rows = await conn.fetch(STALLED_SQL, APPLICATION_NAME_PREFIX, timeout=self._timeout)
        stalled = pick_stalled(
            rows, self._seen, mid_statement=self._mid_statement, idle_holding=self._idle_holding
        )
        for victim in stalled:
            await conn.execute("SELECT pg_terminate_backend($1)", victim.pid, timeout=self._timeout)
            self._seen.pop(victim.pid, None)
            self._metrics.stalled_backends_terminated.labels(kind=victim.kind).inc()
            log.warning(
                "stalled_backend_terminated",
                pid=victim.pid,
                kind=victim.kind,
                holder=victim.application_name,
                stalled_seconds=round(victim.age, 3),
            )
        return stalled

    async def _run(self) -> None:
        while not self._stopping:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(
                    self._dsn,
                    timeout=self._timeout,
                    server_settings={"application_name": application_name("reaper")},
                )
                while not self._stopping:
                    await self.reap(conn)
                    await asyncio.sleep(self.interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the reaper die: Postgres will be back
                if not isinstance(exc, UNREACHABLE):
                    log.warning("stall_reaper_failed", error=repr(exc))
                self._seen.clear()
                await asyncio.sleep(1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # close() could wait forever on a dead link
