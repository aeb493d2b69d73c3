"""An admin (de)activates a mitra. Deactivation closes the mitra's open chat sessions in
the transaction that deactivates it, so it lives with the sessions (which build on
availability, never the reverse); reactivation only lets the mitra log in and go online
again."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from ..aftercommit import run_after_commit
from ..auth.sockets import end_sockets
from ..availability.status import MitraView, read_mitra_view
from ..availability.sync import mirror_mitras
from ..concepts import OPEN_SESSION_STATUSES
from ..context import Context
from ..errors import DatabaseBusy, NotFound
from ..events.announce import Announce, record_effects
from .actions import close_locked, lock_sessions_for_change, open_session_ids
from .models import ChatSession
from .transitions import session_changed

# Deactivation closes the mitra's open chat sessions in the transaction that deactivates
# it, so no order of an accept and a deactivation leaves an open session for a
# deactivated mitra. Lock order: the sessions first (each as every session change takes
# it: its timer rows, then its row; sessions in id order), the mitra's row last. Every
# session change locks its session and then writes the mitra's row
# (`availability.load.record_session_change`), so the mitra's row first and its sessions
# after would deadlock against any of them. Sessions first leaves one gap: an accept committing
# between our list and our lock of the mitra's row adds a session we did not lock. An
# accept holds the mitra's row until it commits, so once we hold that row the list is
# complete; if it grew, we roll back and start again with the longer list. An accept can
# only win that race while the mitra has capacity left, so a few attempts suffice.
DEACTIVATION_ATTEMPTS = 5
DEACTIVATION_REASON = "mitra_deactivated"


class _SessionsGrew(Exception):
    """An accept committed a session for the mitra after we listed its sessions."""


async def _deactivate(
    conn: asyncpg.Connection, mitra_id: UUID, actor_id: UUID | None, now: datetime
) -> list[ChatSession]:
    """Inside a transaction: the mitra inactive and offline, its open sessions closed
    (pending_payment -> cancelled, active -> ended, reason `mitra_deactivated`), every
    login revoked. Returns the closed session rows; NotFound for an unknown mitra."""
    listed = await open_session_ids(conn, mitra_id)
    rows = await lock_sessions_for_change(conn, listed)
    updated = await conn.fetchval(
        "UPDATE mitras SET is_active = false, is_online = false, status_changed_at = $2"
        " WHERE id = $1 RETURNING id",
        mitra_id,
        now,
    )
    if updated is None:
        raise NotFound(f"no mitra with id {mitra_id}")
    if set(await open_session_ids(conn, mitra_id)) - set(listed):
        raise _SessionsGrew
    closed = []
    for row in rows:
        if row.status not in OPEN_SESSION_STATUSES:
            continue  # closed by a party or a timer while we waited
        closed_row = await close_locked(
            conn, row, actor_id=actor_id, actor_role="admin", reason=DEACTIVATION_REASON,
            now=now,
        )  # fmt: skip
        closed.append(closed_row)
    await conn.execute(
        "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = 'mitra_deactivated'"
        " WHERE user_id = $1 AND revoked_at IS NULL",
        mitra_id,
        now,
    )
    return closed


async def do_set_mitra_active(
    ctx: Context, mitra_id: UUID, active: bool, now: datetime, *, actor_id: UUID | None = None
) -> MitraView:
    """Deactivation, in one transaction: the mitra offline, its open chat sessions closed
    (unpaid ones cancelled, paid ones ended; `actor_id`, the admin, and the reason
    `mitra_deactivated` in their history), every auth session it has revoked. After the
    commit: its sockets closed on every instance (1008 `account_deactivated`), then
    capacity, the mirror and `session.updated` events. Reactivation only
    lets the mitra log in and go online again. NotFound for an unknown mitra; DatabaseBusy
    (503) if accepts kept adding sessions through DEACTIVATION_ATTEMPTS attempts."""
    closed: list[ChatSession] = []
    changed: Announce | None = None
    # The answer is the mitra as this change left it, read in its transaction (the row
    # lock held): an admin racing another one sees their own write, not the other's.
    if active:
        async with ctx.db.transaction() as conn:
            updated = await conn.fetchval(
                "UPDATE mitras SET is_active = true, status_changed_at = $2 "
                "WHERE id = $1 RETURNING id",
                mitra_id,
                now,
            )
            if updated is None:
                raise NotFound(f"no mitra with id {mitra_id}")
            view = await read_mitra_view(conn, mitra_id)
    else:
        for _ in range(DEACTIVATION_ATTEMPTS):
            try:
                async with ctx.db.transaction() as conn:
                    closed = await _deactivate(conn, mitra_id, actor_id, now)
                    view = await read_mitra_view(conn, mitra_id)
                    if closed:  # session.updated recorded with the change (events/log.py)
                        changed = session_changed(ctx, closed)
                        await record_effects(conn, now, [changed])
                break
            except _SessionsGrew:
                continue
        else:
            raise DatabaseBusy(f"mitra {mitra_id} kept gaining sessions; retry the deactivation")
    # The mirror of this mitra follows either way (in session_changed when it had sessions).
    effect = changed if changed is not None else mirror_mitras(ctx, [mitra_id])
    effects = [effect]
    if not active:  # every socket of the mitra closes, 1008 `account_deactivated`
        effects.insert(0, end_sockets(ctx, mitra_id, None, DEACTIVATION_REASON))
    await run_after_commit(ctx, effects)
    return view
