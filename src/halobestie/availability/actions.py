"""Writes of the availability engine: Postgres commits first, then the mirror follows
(best effort, logged and counted, never failing the request)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ..clock import iso
from ..context import Context
from ..errors import DatabaseBusy, MirrorUnavailable, MitraDeactivated, NotFound, NotOnline
from ..sessions import actions as session_actions
from ..sessions.transitions import OPEN, after_session_change
from .scripts import scripts
from .status import MitraView, get_mitra_view
from .sync import sync_mitras


async def _explain_refusal(ctx: Context, mitra_id: UUID) -> None:
    """An UPDATE matched no row: say why, naming the culprit."""
    async with ctx.db.connection() as c:
        row = await c.fetchrow("SELECT is_active, is_online FROM mitras WHERE id = $1", mitra_id)
    if row is None:
        raise NotFound(f"no mitra with id {mitra_id}")
    if not row["is_active"]:
        raise MitraDeactivated(f"mitra {mitra_id} is deactivated")
    if not row["is_online"]:
        raise NotOnline(f"mitra {mitra_id} is not online; go online first")


async def do_go_online(ctx: Context, mitra_id: UUID, now: datetime) -> None:
    """Online, with a fresh heartbeat in Postgres too (the fallback judges from it)."""
    async with ctx.db.connection() as conn:
        updated = await conn.fetchval(
            """
            UPDATE mitras SET is_online = true,
                   last_heartbeat_at = GREATEST(last_heartbeat_at, $2),
                   status_changed_at = $2
            WHERE id = $1 AND is_active RETURNING id
            """,
            mitra_id,
            now,
        )
    if updated is None:
        try:
            await _explain_refusal(ctx, mitra_id)
        except NotOnline:
            # Deactivated when the UPDATE ran, reactivated since: still that refusal
            # (not "go online first", which makes no sense on this endpoint).
            raise MitraDeactivated(f"mitra {mitra_id} is deactivated") from None
    await sync_mitras(ctx, [mitra_id])


async def do_go_offline(ctx: Context, mitra_id: UUID, now: datetime) -> None:
    async with ctx.db.connection() as conn:
        updated = await conn.fetchval(
            """
            UPDATE mitras SET is_online = false,
                   status_changed_at = CASE WHEN is_online THEN $2 ELSE status_changed_at END
            WHERE id = $1 RETURNING id
            """,
            mitra_id,
            now,
        )
    if updated is None:
        raise NotFound(f"no mitra with id {mitra_id}")
    await sync_mitras(ctx, [mitra_id])


# Deactivation closes the mitra's open chat sessions in the transaction that deactivates
# it, so no order of an accept and a deactivation leaves an open session for a
# deactivated mitra. Lock order: the sessions first (each as every session change takes
# it: its timer rows, then its row; sessions in id order), the mitra's row last. Every
# session change locks its session and then writes the mitra's row
# (`load.record_session_change`), so the mitra's row first and its sessions after would
# deadlock against any of them. Sessions first leaves one gap: an accept committing
# between our list and our lock of the mitra's row adds a session we did not lock. An
# accept holds the mitra's row until it commits, so once we hold that row the list is
# complete; if it grew, we roll back and start again with the longer list. An accept can
# only win that race while the mitra has capacity left, so a few attempts suffice.
DEACTIVATION_ATTEMPTS = 5
DEACTIVATION_REASON = "mitra_deactivated"


class _SessionsGrew(Exception):
    """An accept committed a session for the mitra after we listed its sessions."""


async def _deactivate(conn: Any, mitra_id: UUID, actor_id: UUID | None, now: datetime) -> Any:
    """Inside a transaction: the mitra inactive and offline, its open sessions closed
    (pending_payment -> cancelled, active -> ended, reason `mitra_deactivated`), every
    login revoked. Returns the closed session rows; NotFound for an unknown mitra."""
    listed = await session_actions.open_session_ids(conn, mitra_id)
    rows = await session_actions.lock_sessions_for_change(conn, listed)
    updated = await conn.fetchval(
        "UPDATE mitras SET is_active = false, is_online = false, status_changed_at = $2"
        " WHERE id = $1 RETURNING id",
        mitra_id,
        now,
    )
    if updated is None:
        raise NotFound(f"no mitra with id {mitra_id}")
    if set(await session_actions.open_session_ids(conn, mitra_id)) - set(listed):
        raise _SessionsGrew
    closed = []
    for row in rows:
        if row["status"] not in OPEN:  # closed by a party or a timer while we waited
            continue
        closed_row = await session_actions.close_locked(
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
    `mitra_deactivated` in their history), every auth session it has revoked. Capacity,
    the mirror and `session.updated` events follow after the commit. Reactivation only
    lets the mitra log in and go online again. NotFound for an unknown mitra; DatabaseBusy
    (503) if accepts kept adding sessions through DEACTIVATION_ATTEMPTS attempts."""
    closed: list[Any] = []
    if active:
        async with ctx.db.connection() as conn:
            updated = await conn.fetchval(
                "UPDATE mitras SET is_active = true, status_changed_at = $2 "
                "WHERE id = $1 RETURNING id",
                mitra_id,
                now,
            )
        if updated is None:
            raise NotFound(f"no mitra with id {mitra_id}")
    else:
        for _ in range(DEACTIVATION_ATTEMPTS):
            try:
                async with ctx.db.transaction() as conn:
                    closed = await _deactivate(conn, mitra_id, actor_id, now)
                break
            except _SessionsGrew:
                continue
        else:
            raise DatabaseBusy(f"mitra {mitra_id} kept gaining sessions; retry the deactivation")
    if closed:
        await after_session_change(ctx, closed)  # the mirror of this mitra included
    else:
        await sync_mitras(ctx, [mitra_id])
    return await get_mitra_view(ctx, mitra_id)


@dataclass(frozen=True)
class HeartbeatResult:
    at: datetime
    at_iso: str  # `at` as written to Valkey (formatted once: this is the hot path)
    source: str  # "valkey" on the hot path, "postgres" during a Valkey outage


HEARTBEAT_FALLBACK_SQL = """
UPDATE mitras SET last_heartbeat_at = GREATEST(last_heartbeat_at, $2)
WHERE id = $1 AND is_active AND is_online
RETURNING id
"""


async def do_record_heartbeat(ctx: Context, mitra_id: UUID, now: datetime) -> HeartbeatResult:
    """The hot path: one Lua call in Valkey (guard + write), zero Postgres statements.

    While the mirror is unusable: a full Postgres check of the mitra (a deactivated
    mitra is refused during an outage too) and the heartbeat written straight into
    `last_heartbeat_at`, so the Postgres fallback keeps judging freshness correctly.
    """
    keys = ctx.keys
    key_id = str(mitra_id)
    stamp = iso(now)
    try:
        outcome = await ctx.mirror.read(
            "heartbeat",
            lambda c: ctx.mirror.batched.call(
                scripts(ctx).heartbeat,
                [keys.deactivated, keys.online, keys.heartbeat(key_id)],
                [key_id, stamp],
            ),
        )
    except MirrorUnavailable:
        ctx.metrics.fallback_reads.labels(reader="heartbeat").inc()
        for _ in range(2):
            async with ctx.db.connection() as conn:
                if await conn.fetchval(HEARTBEAT_FALLBACK_SQL, mitra_id, now) is not None:
                    return HeartbeatResult(now, stamp, "postgres")
            # Raises with the reason; returns only if the mitra went (back) online
            # between the UPDATE and this check, and then the UPDATE is worth a retry.
            await _explain_refusal(ctx, mitra_id)
        raise NotOnline(f"mitra {mitra_id} is changing status; retry the heartbeat") from None
    if outcome == -1:
        raise MitraDeactivated(f"mitra {mitra_id} is deactivated")
    if outcome == 0:
        raise NotOnline(f"mitra {mitra_id} is not online; go online first")
    return HeartbeatResult(now, stamp, "valkey")
