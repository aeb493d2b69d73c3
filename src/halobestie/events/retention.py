"""The event log's retention sweep: events older than EVENT_RETENTION_SECONDS go.

Run by the instances that run sweeps (SWEEPS_ENABLED; availability/sweeps.py schedules
it every `cadence(settings)` seconds). Deletes in batches of BATCH rows, each in a
transaction of its own holding a transaction-level try-lock, so a second instance
sweeping at the same moment skips instead of racing it, and no batch holds locks for
long. Counters (`event_cursors`) stay: numbering goes on where it was, and a client
whose `since` is older than what is kept is told to resync (SPEC §6).

Cost: one index range scan of `events_created_at_idx` and the deletes per batch; nothing
when nothing expired.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..config import Settings
from ..context import Context
from ..logs import get_logger
from .log import delete_expired

log = get_logger(__name__)

BATCH = 5000
# availability/locks.py's namespace and this sweep's key there (events sits below
# availability in the layers, so it keeps its own copy of the pair).
LOCK_NAMESPACE = 4242
LOCK_KEY = 5


def cadence(settings: Settings) -> float:
    """Seconds between sweeps: a tenth of the retention, between 1 s and 5 minutes."""
    return min(300.0, max(1.0, settings.event_retention_seconds / 10))


async def run_event_retention(ctx: Context, now: datetime) -> int:
    """Delete every event created before `now - EVENT_RETENTION_SECONDS`, BATCH at a
    time; returns how many went (0 as well when another instance holds the sweep).
    Raises ServiceUnavailable when Postgres is down (the runner logs and retries)."""
    before = now - timedelta(seconds=ctx.settings.event_retention_seconds)
    deleted = 0
    while True:
        async with ctx.db.transaction() as conn:
            got = await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1::int, $2::int)", LOCK_NAMESPACE, LOCK_KEY
            )
            if not got:
                return deleted
            batch = await delete_expired(conn, before, BATCH)
        deleted += batch
        if batch < BATCH:
            break
    if deleted:
        log.info("events_expired", deleted=deleted, before=before.isoformat())
    return deleted
