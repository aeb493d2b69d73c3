"""Session time (SPEC §7): `session.ending_soon` before a session's `ends_at`.

`session.ending_soon` `{session_id, ends_at, remaining_seconds}` goes to both parties at
each of SESSION_WARNING_SECONDS (default 300 and 60) before `ends_at`;
`remaining_seconds` is the whole seconds actually left when it is sent.

One durable timer per active session, kind `session_warning`, due at its *next* warning:
`ends_at - offset` for the largest offset whose moment is still ahead. It is armed when
the session becomes active (`arm_warnings` in the paying transaction), re-armed by every
extension in the extending transaction, cancelled with the session's other timers when
it closes, and re-armed by its own handler after each warning. So the timer engine's
guarantees are this feature's (timers.py): exactly once across instances, and one that
fell due while no instance ran fires at the next start.

Which warning is due is derived from `ends_at` and the firing time alone, never from a
record of what was sent:

* after firing at `now`, the next warning is the largest offset with
  `ends_at - offset > now`, so each fires once;
* an extension moves `ends_at`: the warnings not yet sent move with it, and those whose
  new moment lies ahead again are re-armed (a 5-minute warning already sent comes back
  when 10 minutes are bought);
* a warning whose moment passed before the session became active is not sent (a
  5-minute session gets its 1-minute warning only);
* several warnings due at once (an instance was down across two of them) are sent as one
  event, with the seconds actually left: two "time is running out" at the same instant
  say nothing more than one;
* none once `ends_at` has passed: the expiry is due, and `session.updated` says it.

One row per session keeps `timers`' UNIQUE (kind, ref_id) as it is, and the offsets can
change between deploys without a migration (the next firing uses the new list).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from ..aftercommit import AfterCommit
from ..clock import iso
from ..context import Context
from ..events.announce import announce
from ..timers import TimerKind, cancel_timer, schedule_timer
from .models import ChatSession
from .transitions import lock_session_if_exists

KIND: TimerKind = "session_warning"


def next_warning(ends_at: datetime, now: datetime, offsets: Sequence[int]) -> int | None:
    """The largest offset (seconds) whose moment `ends_at - offset` is after `now`; None
    when every one has passed. `offsets` largest first (config.py keeps them so)."""
    for offset in offsets:
        if ends_at - timedelta(seconds=offset) > now:
            return offset
    return None


async def arm_warnings(
    ctx: Context, conn: asyncpg.Connection, session_id: UUID, ends_at: datetime, now: datetime
) -> None:
    """Inside the transaction that makes the session active or moves its `ends_at`, with
    the session's timer rows locked (`actions.lock_for_change`): the warning timer due
    at the next warning, or none when none lies ahead."""
    offset = next_warning(ends_at, now, ctx.settings.session_warning_seconds)
    if offset is None:
        await cancel_timer(conn, KIND, session_id)
    else:
        await schedule_timer(conn, KIND, session_id, ends_at - timedelta(seconds=offset))


def ending_soon(
    ctx: Context, row: ChatSession, ends_at: datetime, remaining_seconds: int
) -> AfterCommit:
    """The effect that tells both parties: recorded in the firing transaction by the
    runtime's `events.announce.recording` wrapper, delivered after commit."""
    data = {
        "session_id": str(row.id),
        "ends_at": iso(ends_at),
        "remaining_seconds": remaining_seconds,
    }
    parties = [row.customer_id, row.mitra_id]
    return announce(ctx, parties, "session.ending_soon", data, name="publish_ending_soon")


async def on_session_warning(
    ctx: Context, conn: asyncpg.Connection, session_id: UUID, now: datetime
) -> list[AfterCommit]:
    """The `session_warning` timer fires: warn both parties if a warning is due, and arm
    the next one. A no-op for a session no longer active or already run out.

    Lock order as every session timer (lifecycle.py): this timer row (held by the
    runner), then the session row."""
    row = await lock_session_if_exists(conn, session_id)
    if row is None or row.status != "active" or row.ends_at is None:
        return []
    ends_at = row.ends_at
    if ends_at <= now:
        return []
    offsets = ctx.settings.session_warning_seconds
    due = any(ends_at - timedelta(seconds=offset) <= now for offset in offsets)
    # Delete the firing row and arm the next afresh: re-arming the same row would be
    # marked fired by the engine right after this handler returns.
    await cancel_timer(conn, KIND, session_id)
    await arm_warnings(ctx, conn, session_id, ends_at, now)
    if not due:
        return []  # early for the current ends_at (moved meanwhile): re-armed only
    return [ending_soon(ctx, row, ends_at, int((ends_at - now).total_seconds()))]
